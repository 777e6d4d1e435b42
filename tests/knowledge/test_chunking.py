import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from chats.providers import estimate_tokens
from knowledge.chunking import OVERLAP_TOKENS, TARGET_TOKENS, chunk_document


def paragraph(word: str, words: int) -> str:
    return " ".join(f"{word}{i}" for i in range(words)) + "."


def test_blank_document_has_no_chunks():
    assert chunk_document("") == []
    assert chunk_document(" \n\n \n") == []


def test_small_document_is_one_chunk():
    text = "# Title\n\nA short paragraph.\n\nAnother one."
    chunks = chunk_document(text)
    assert [c.text for c in chunks] == [text]
    assert chunks[0].token_count == estimate_tokens(text)


def test_each_large_section_starts_a_chunk():
    text = "\n\n".join(
        [
            "# Alpha",
            paragraph("alpha", 120),
            "## Beta",
            paragraph("beta", 120),
        ]
    )
    chunks = chunk_document(text)
    assert [c.text.splitlines()[0] for c in chunks] == ["# Alpha", "## Beta"]


def test_small_sections_are_merged_not_left_as_lone_headings():
    text = "# One\n\nshort.\n\n# Two\n\nshort too.\n\n# Three"
    chunks = chunk_document(text)
    assert len(chunks) == 1
    assert "# Three" in chunks[0].text


def test_long_section_is_split_with_heading_and_overlap():
    paragraphs = [paragraph(f"p{n}w", 60) for n in range(12)]
    text = "## Storage\n\n" + "\n\n".join(paragraphs)
    chunks = chunk_document(text)
    assert len(chunks) > 1
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.text.startswith("## Storage\n\n")
        body = chunk.text.removeprefix("## Storage\n\n")
        overlap = body.split("\n\n")[0]
        assert previous.text.endswith(overlap)  # the tail of the previous chunk
        assert estimate_tokens(overlap) <= OVERLAP_TOKENS + 1


def test_fenced_code_block_is_never_split_at_blank_lines():
    code = "```python\ndef f():\n\n    return 1\n\n\nprint(f())\n```"
    chunks = chunk_document(f"# Code\n\nIntro.\n\n{code}\n\nAfter.")
    assert code in chunks[0].text


def test_heading_inside_a_code_block_is_not_a_heading():
    text = "# Real\n\n" + paragraph("a", 150) + "\n\n```sh\n# not a heading\necho hi\n```"
    chunks = chunk_document(text)
    assert all(not c.text.startswith("# not a heading") for c in chunks)


def test_a_paragraph_larger_than_a_chunk_is_cut_at_sentences():
    sentences = " ".join(f"Sentence number {i} talks about storage." for i in range(400))
    chunks = chunk_document(sentences)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.token_count <= TARGET_TOKENS + OVERLAP_TOKENS + 2
        assert chunk.text.rstrip().endswith(".")


def test_a_word_larger_than_a_chunk_is_cut_anyway():
    blob = "x" * 10_000
    chunks = chunk_document(blob)
    assert "".join(c.text for c in chunks).count("x") >= 10_000
    assert all(c.token_count <= TARGET_TOKENS + OVERLAP_TOKENS + 2 for c in chunks)


def test_windows_line_endings_are_understood():
    chunks = chunk_document("# A\r\n\r\ntext one\r\n\r\n# B\r\n\r\ntext two")
    assert "\r" not in chunks[0].text


markdown = st.lists(
    st.one_of(
        st.from_regex(r"#{1,3} [a-z]{1,10}", fullmatch=True),
        st.lists(st.from_regex(r"[a-z]{1,12}", fullmatch=True), min_size=1, max_size=300).map(
            " ".join
        ),
    ),
    min_size=1,
    max_size=30,
).map("\n\n".join)


@settings(max_examples=60, deadline=None)
@given(markdown)
def test_every_word_lands_in_a_chunk_and_chunks_stay_bounded(text):
    chunks = chunk_document(text)
    chunked = set(re.findall(r"[a-z#]+", " ".join(c.text for c in chunks)))
    assert set(re.findall(r"[a-z#]+", text)) <= chunked
    for chunk in chunks:
        # A chunk holds at most its target, plus the repeated heading and overlap.
        assert chunk.token_count <= TARGET_TOKENS + OVERLAP_TOKENS + 10
        assert chunk.text.strip()


def test_a_heading_is_not_left_at_the_end_of_a_chunk():
    text = "# Intro\n\nshort.\n\n# Details\n\n" + paragraph("d", 480)
    chunks = chunk_document(text)
    assert [c.text.splitlines()[0] for c in chunks] == ["# Intro", "# Details"]
