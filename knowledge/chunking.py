"""Split a text or Markdown document into retrieval chunks (pure; no Django).

Chunks follow the document's structure: a heading starts a new chunk (small sections are
merged so a chunk is never a lone heading), paragraphs and fenced code blocks are packed
whole up to ~``target_tokens``. When a section runs over, the next chunk repeats the
section's heading and the last ~``overlap_tokens`` of the previous chunk, so a passage cut
at a boundary is still findable with its context. Only a paragraph larger than a chunk
is cut: at sentences, then words, then characters.
"""

import re
from dataclasses import dataclass

from chats.providers import estimate_tokens

TARGET_TOKENS = 500
OVERLAP_TOKENS = 50
# A section shorter than this is merged with the next one instead of ending a chunk.
MIN_SECTION_TOKENS = 100

_HEADING = re.compile(r"^#{1,6}\s+\S")
_FENCE = re.compile(r"^(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    text: str
    token_count: int


@dataclass(frozen=True)
class _Block:
    text: str
    is_heading: bool = False


def chunk_document(
    text: str, *, target_tokens: int = TARGET_TOKENS, overlap_tokens: int = OVERLAP_TOKENS
) -> list[Chunk]:
    """The document's chunks, in order; none for a blank document."""
    packer = _Packer(target_tokens, overlap_tokens)
    for block in _blocks(text):
        if block.is_heading:
            packer.heading(block.text)
        else:
            for piece in _split(block.text, max(1, target_tokens - overlap_tokens)):
                packer.add(piece)
    return packer.finish()


class _Packer:
    def __init__(self, target: int, overlap: int) -> None:
        self.target, self.overlap = target, overlap
        self.chunks: list[Chunk] = []
        self.parts: list[str] = []
        self.has_body = False  # parts hold more than a repeated heading and overlap
        self.section_heading: str | None = None

    def heading(self, text: str) -> None:
        if self.has_body and self._tokens() >= MIN_SECTION_TOKENS:
            self._emit()
        self.section_heading = text
        self.parts.append(text)
        self.has_body = True

    def add(self, piece: str) -> None:
        if self.has_body and self._tokens() + estimate_tokens(piece) > self.target:
            if self.parts[-1] == self.section_heading:
                # The section has only begun: it moves to the next chunk whole.
                self.parts.pop()
                self._emit()
                self.parts.append(self.section_heading)
            else:
                previous = "\n\n".join(self.parts)
                self._emit()
                if self.section_heading:
                    self.parts.append(self.section_heading)
                if tail := _tail(previous, self.overlap):
                    self.parts.append(tail)
        self.parts.append(piece)
        self.has_body = True

    def finish(self) -> list[Chunk]:
        if self.has_body:
            self._emit()
        return self.chunks

    def _tokens(self) -> int:
        return estimate_tokens("\n\n".join(self.parts))

    def _emit(self) -> None:
        text = "\n\n".join(self.parts).strip()
        if text:
            self.chunks.append(Chunk(text, estimate_tokens(text)))
        self.parts, self.has_body = [], False


def _blocks(text: str) -> list[_Block]:
    """Headings, paragraphs and fenced code blocks (kept whole), in order."""
    blocks: list[_Block] = []
    lines: list[str] = []
    fence: str | None = None

    def flush() -> None:
        joined = "\n".join(lines).strip("\n")
        if joined.strip():
            blocks.append(_Block(joined))
        lines.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        stripped = line.lstrip()
        if fence is not None:
            lines.append(line)
            if stripped.startswith(fence):
                fence = None
                flush()
        elif match := _FENCE.match(stripped):
            flush()
            fence = match.group(1)
            lines.append(line)
        elif _HEADING.match(line):
            flush()
            blocks.append(_Block(line.strip(), is_heading=True))
        elif not line.strip():
            flush()
        else:
            lines.append(line)
    flush()
    return blocks


def _split(text: str, max_tokens: int) -> list[str]:
    """``text`` in pieces of at most ``max_tokens``: whole if it fits, else cut at
    sentence ends, then at spaces, then anywhere."""
    if estimate_tokens(text) <= max_tokens:
        return [text]
    for pattern in (_SENTENCE_END, re.compile(r"\s+")):
        units = [u for u in pattern.split(text) if u]
        if len(units) > 1:
            packed = _pack(units, max_tokens)
            return [piece for unit in packed for piece in _split(unit, max_tokens)]
    size = max_tokens * 4
    return [text[i : i + size] for i in range(0, len(text), size)]


def _pack(units: list[str], max_tokens: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current} {unit}" if current else unit
        if current and estimate_tokens(candidate) > max_tokens:
            pieces.append(current)
            current = unit
        else:
            current = candidate
    if current:
        pieces.append(current)
    return pieces


def _tail(text: str, tokens: int) -> str:
    """The last ~``tokens`` of ``text``, starting at a word boundary."""
    if tokens <= 0:
        return ""
    tail = text[-tokens * 4 :]
    if len(tail) < len(text) and " " in tail:
        tail = tail.split(" ", 1)[1]
    return tail.strip()
