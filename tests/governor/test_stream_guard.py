"""The output guard on its own: whatever way an answer is split into tokens, what goes out
is the answer with its findings redacted, and the guard holds back a bounded tail."""

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from governor.detectors import redact, scan_uncached
from governor.injection import find_markup, neutralise_markup
from governor.stream_guard import HOLD_LIMIT, StreamGuard
from tests.governor.corpus import CORPUS

KINDS = ("secret", "iban", "card", "ssn", "email", "phone")
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"
KEY = "sk-proj-Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7"
ANSWER = (
    f"Sure. The card {CARD} and the IBAN {IBAN} are on file. Write to {EMAIL} or call "
    f"+49 30 1234567 or (555) 123-4567; SSN 123-45-6789. Your key is {KEY}, keep it. "
    'Click <a href="javascript:alert(1)">here</a> or <img src=x onerror=alert(1)> now.'
)


def words(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+", text)


def stream(guard: StreamGuard, tokens: list[str]) -> list[str]:
    out = [guard.feed(token) for token in tokens]
    out.append(guard.flush())
    return out


def whole(text: str, kinds=KINDS, markup=True) -> str:
    redacted = redact(text, scan_uncached(text, kinds))
    return neutralise_markup(redacted) if markup else redacted


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def test_word_tokens_come_out_redacted_and_neutralised():
    out = stream(StreamGuard(redact=KINDS, neutralise_markup=True), words(ANSWER))
    sent = "".join(out)
    assert sent == whole(ANSWER)
    for value in (EMAIL, CARD, IBAN, KEY, "123-45-6789", "<img", '"javascript:'):
        assert value not in sent
    assert "[REDACTED:card]" in sent and "[REDACTED:email]" in sent
    assert find_markup(sent) == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=60))
def test_any_split_gives_what_the_whole_answer_gives(cuts):
    tokens = split_at(ANSWER, cuts)
    guard = StreamGuard(redact=KINDS, neutralise_markup=True)
    assert "".join(stream(guard, tokens)) == whole(ANSWER)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_split_holds_back_at_most_the_limit(cuts):
    guard = StreamGuard(redact=KINDS, neutralise_markup=True)
    for token in split_at(ANSWER * 3, cuts):
        guard.feed(token)
        assert len(guard._held) <= HOLD_LIMIT + len(token)


def test_report_counts_what_changed():
    guard = StreamGuard(redact=KINDS, neutralise_markup=True)
    stream(guard, words(ANSWER))
    report = guard.report()
    assert report["card"] == 1 and report["email"] == 1 and report["secret"] == 1
    assert report["phone"] == 2 and report["markup"] == 2


def test_a_markup_only_guard_passes_ordinary_tokens_through_one_for_one():
    tokens = words("This is the offline demo model. You said: hello, don't worry #d3")
    out = stream(StreamGuard(neutralise_markup=True), tokens)
    assert out[:-1] == tokens  # nothing held back, nothing merged
    assert out[-1] == ""


def test_a_markup_only_guard_holds_an_open_tag_until_it_closes():
    guard = StreamGuard(neutralise_markup=True)
    assert guard.feed("See <img src=x ") == "See "
    assert guard.feed("onerror=alert(1)") == ""
    assert guard.feed("> ok") == "&lt;img src=x onerror=alert(1)&gt; ok"


def test_a_less_than_sign_in_prose_is_not_held():
    guard = StreamGuard(neutralise_markup=True)
    assert guard.feed("if a < b then") == "if a < b then"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=60))
def test_without_email_any_split_gives_what_the_whole_answer_gives(cuts):
    kinds = [kind for kind in KINDS if kind != "email"]
    guard = StreamGuard(redact=kinds, neutralise_markup=True)
    out = "".join(stream(guard, split_at(ANSWER, cuts)))
    assert out == whole(ANSWER, kinds)


def test_without_email_plain_words_go_out_as_they_come():
    tokens = words("Sure, here is what the refund policy says about returns.")
    out = stream(StreamGuard(redact=["secret", "card", "iban", "phone"]), tokens)
    assert out[:-1] == tokens


def test_without_email_words_that_could_grow_are_still_held():
    guard = StreamGuard(redact=["secret", "card"])
    assert guard.feed("key") == "key"
    assert guard.feed(" ghp") == " "  # "ghp" could become a GitHub token
    assert guard.feed("_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8") == ""
    assert guard.feed(" and 4111") == "[REDACTED:secret] and "
    assert guard.flush() == "4111"


def test_a_pii_guard_lags_by_one_word():
    guard = StreamGuard(redact=["email"])
    assert guard.feed("Write") == ""
    assert guard.feed(" to") == "Write "
    assert guard.feed(" jane.doe@exa") == "to "
    assert guard.feed("mple.com") == ""
    assert guard.feed(" today") == "[REDACTED:email] "
    assert guard.flush() == "today"


def test_a_private_key_is_cut_out_whole_however_long():
    body = "\n".join("MIIEow" + "QK" * 29 for _ in range(40))
    answer = f"Here:\n-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\nDone."
    out = "".join(stream(StreamGuard(redact=["secret"]), words(answer)))
    assert out == "Here:\n[REDACTED:secret]\nDone."


def test_a_private_key_without_its_end_line_is_dropped_to_the_end():
    answer = "Here:\n-----BEGIN OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjE " * 40
    out = "".join(stream(StreamGuard(redact=["secret"]), words(answer)))
    assert out == "Here:\n[REDACTED:secret]"


def test_a_guard_for_nothing_is_inactive():
    assert not StreamGuard().active
    assert StreamGuard(redact=["email"]).active
    assert StreamGuard(neutralise_markup=True).active


MODES = [
    (KINDS, True),
    (tuple(kind for kind in KINDS if kind != "email"), True),
    ((), True),
    (("secret", "card"), False),
]


ICD_AFTER = "Code E11.9 is what the diagnosis says; J45.909 too, per the condition list."


def test_an_icd_code_with_its_diagnosis_wording_after_it_is_redacted_in_any_split():
    for size in range(1, 12):
        tokens = [ICD_AFTER[i : i + size] for i in range(0, len(ICD_AFTER), size)]
        out = "".join(stream(StreamGuard(redact=["health_id"]), tokens))
        assert out == whole(ICD_AFTER, ["health_id"], markup=False)
        assert "E11.9" not in out and "J45.909" not in out


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([ICD_AFTER, *(sample.text for sample in CORPUS)]),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    st.sampled_from(MODES),
)
def test_every_corpus_message_split_anyhow_comes_out_as_it_would_whole(text, cuts, mode):
    kinds, markup = mode
    guard = StreamGuard(redact=kinds, neutralise_markup=markup)
    assert "".join(stream(guard, split_at(text, cuts))) == whole(text, kinds, markup)
