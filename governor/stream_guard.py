"""Guarding an answer while it streams: personal data and secrets redacted, active markup
neutralised, before a token reaches the client.

The engine passes each token through :meth:`StreamGuard.feed` and sends what comes back
(possibly nothing yet), then sends :meth:`StreamGuard.flush` when the stream ends; what is
sent is what is stored. The guard holds back only the tail that could still grow into a
finding: the last word until whitespace ends it (a plain word goes out at once when e-mail
addresses are not redacted: only an address can start like one), a run of number groups
before it (a card, IBAN or phone number arrives in pieces), an ICD-10 code until the 40
characters after it are in (the diagnosis wording that makes it one may follow), an unclosed
tag. The detectors see the last ``CONTEXT`` characters already sent too, for the labels
some of them need ("SSN", "NHS").

Bounded: at most ``HOLD_LIMIT`` characters are held (beyond that the oldest are released,
scanned), so each token costs one scan of a few hundred characters at most, in memory.
A PEM private key, longer than that, is cut out whole: everything from its BEGIN line to
its END line becomes one ``[REDACTED:secret]``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from governor.detectors import ICD10_CONTEXT_CHARS, ICD10_RE, KIND_PRIORITY, scan_uncached
from governor.injection import find_markup, make_inert

__all__ = ["CONTEXT", "HOLD_LIMIT", "StreamGuard"]

HOLD_LIMIT = 256
CONTEXT = 64

_TRAILING_WORD = re.compile(r"\S*\Z")
# Words before the last one that could be groups of one spaced number ("4111 1111 ...",
# "DE89 3704 ...", "+49 30 ...", "(555) 123-4567"), with their separators.
_GROUP_RUN = re.compile(r"(?<!\S)(?:(?:\S*\d\S*|[A-Z0-9-]+|[-+./()]+)[ \t]{1,2})+\Z")
_OPEN_TAG = re.compile(r"<(?=[A-Za-z/!?]|\Z)")
_PEM_BEGIN = "-----BEGIN"
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")


class StreamGuard:
    """One answer's guard: ``redact`` names the detector kinds to redact (``secret``,
    ``card``, ``iban``, ...), ``neutralise_markup`` makes active markup inert."""

    def __init__(self, *, redact: Iterable[str] = (), neutralise_markup: bool = False) -> None:
        self.kinds = frozenset(redact) & frozenset(KIND_PRIORITY)
        self.markup = neutralise_markup
        # Any word could be the start of an e-mail address; without e-mail among the kinds,
        # a plain word cannot grow into a finding, so it goes out at once.
        self._prose_passes = "email" not in self.kinds
        self.changed: Counter[str] = Counter()  # kind -> spans redacted or neutralised
        self._held = ""
        self._context = ""
        self._in_pem = False

    @property
    def active(self) -> bool:
        return bool(self.kinds) or self.markup

    def feed(self, text: str) -> str:
        """What of the answer so far can go out now."""
        held = self._held + text
        if not self.kinds:
            window = self._context + held
            if "<" not in window and ":" not in window and "](" not in window:
                # Markup alone is looked for, and it needs a "<", a scheme's ":" or a
                # Markdown link's "](": prose goes out as it came (what _release would do).
                self._context, self._held = window[-CONTEXT:], ""
                return held
        if self._in_pem:
            held = self._skip_pem(held)
            if self._in_pem:
                return ""
        cut, forced = self._safe_cut(held)
        if cut <= 0:
            self._held = held
            return ""
        return self._release(held, cut, forced)

    def flush(self) -> str:
        """The rest, at the end of the stream."""
        out: list[str] = []
        held, self._held = self._held, ""
        while held:
            if self._in_pem:
                held = self._skip_pem(held)
                if self._in_pem:  # a key without its END line: the rest of it is dropped
                    break
                continue
            out.append(self._release(held, len(held), True))
            held, self._held = self._held, ""
        self._held, self._in_pem = "", False
        return "".join(out)

    def report(self) -> dict[str, int]:
        """How many spans of each kind were changed, for the audit record."""
        return dict(sorted(self.changed.items()))

    # --- internals ----------------------------------------------------------------

    def _safe_cut(self, held: str) -> tuple[int, bool]:
        """Where the held text may be cut: nothing after it can grow into a finding that
        reaches before it. Forced when the hold would exceed ``HOLD_LIMIT``."""
        trailing = _TRAILING_WORD.search(held)
        assert trailing is not None  # \S*\Z matches every string
        cut = trailing.start()
        word = held[cut:]
        before = self._context + held[:cut]
        # "](" may straddle what was sent: the two characters before the word count too.
        markup = self.markup and _could_be_markup(before[-2:] + word)
        if self.kinds and not (
            self._prose_passes
            and not markup
            and _plain_word(word)
            and _BEFORE_A_VALUE.search(before) is None
        ):
            run = _GROUP_RUN.search(held, max(0, cut - HOLD_LIMIT), cut)
            if run is not None:
                cut = run.start()
        elif word and not markup:
            cut = len(held)
        if "health_id" in self.kinds:
            # An ICD-10 code is one when diagnosis wording follows it closely: hold it until
            # that much has come.
            for m in ICD10_RE.finditer(held):
                if len(held) - m.end() < ICD10_CONTEXT_CHARS:
                    cut = min(cut, m.start())
                    break
        if self.markup:
            for m in _OPEN_TAG.finditer(held, max(0, len(held) - HOLD_LIMIT)):
                if ">" not in held[m.start() :]:
                    cut = min(cut, m.start())
                    break
        if len(held) - cut > HOLD_LIMIT:
            return len(held) - HOLD_LIMIT, True
        return cut, False

    def _spans(self, window: str) -> list[tuple[int, int, str]]:
        spans = [(f.start, f.end, f.kind) for f in scan_uncached(window, self.kinds)]
        if self.markup:
            for m in find_markup(window):
                if not any(s < m.end and m.start < e for s, e, _ in spans):
                    spans.append((m.start, m.end, "markup"))
        return sorted(spans)

    def _release(self, held: str, cut: int, forced: bool) -> str:
        window = self._context + held
        offset = len(self._context)
        spans = self._spans(window) if self.active else []
        end = offset + cut
        for start, stop, _ in spans:
            if start < end < stop:  # never cut through a finding
                end = stop if forced else max(start, offset)
        if end <= offset:
            self._held = held
            return ""
        out, pos = [], offset
        for found, stop, kind in spans:
            if stop <= offset or found >= end:
                continue
            start = max(found, offset)  # a finding that began in what was sent already
            out.append(window[pos:start])
            out.append(make_inert(window[start:stop]) if kind == "markup" else f"[REDACTED:{kind}]")
            self.changed[kind] += 1
            pos = stop
            span = window[found:stop]
            if kind == "secret" and span.startswith(_PEM_BEGIN) and not _PEM_END.search(span):
                # A private key's body follows: drop it up to its END line.
                self._in_pem = True
                self._context = ""
                rest = self._skip_pem(window[stop:])
                if not self._in_pem:  # it ended in this window: the rest waits its turn
                    self._held = rest
                return "".join(out)
        out.append(window[pos:end])
        self._context = window[max(0, end - CONTEXT) : end]
        self._held = window[end:]
        return "".join(out)

    def _skip_pem(self, held: str) -> str:
        """Inside a private key: the text after its END line (and leave the block), or
        nothing (keeping enough to recognise an END line split across tokens)."""
        m = _PEM_END.search(held)
        if m is None:
            self._held = held[-60:]
            return ""
        self._in_pem = False
        return held[m.end() :]


# A word of letters, lower case or capitalised (not a lone capital, which could start an
# IBAN's country code), with ordinary punctuation around it: no card, IBAN, phone, SSN,
# health identifier or key starts like that, but for the key prefixes below. (A lower-case
# IBAN split right after its country code would lose that code's two letters.)
_PLAIN_WORD = re.compile(r"[\"'(\[]*(?P<core>[A-Z][a-z]+|[a-z]+)[.,;:!?)\]\"']*")
# Key prefixes that a plain word could still grow into.
_KEY_PREFIXES = (
    "sk-", "sk_", "rk_", "whsec_", "eyJ", "AIza", "AKIA", "ASIA", "SG.", "SK", "ghp_",
    "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xoxa-", "xoxb-", "xoxp-", "xoxr-",
    "npm_", "glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "glft-", "glsoat-", "gloas-",
    "glimt-", "glagent-", "https://hooks.slack.com/",
)  # fmt: skip
# What comes right after these is a value: the word after them is held whatever it is.
_BEFORE_A_VALUE = re.compile(r"(?:[=:]\s*[\"'`]?|\bBearer\s+)\Z")


def _plain_word(word: str) -> bool:
    """Whether a trailing word can go out before it ends (when e-mail is not redacted)."""
    m = _PLAIN_WORD.fullmatch(word)
    if m is None:
        return False
    core = m.group("core")
    return not any(prefix.startswith(core) for prefix in _KEY_PREFIXES)


def _could_be_markup(word: str) -> bool:
    """Whether a trailing word could still become markup the guard neutralises: a tag or a
    Markdown link's destination (held until it is complete); any other word goes out at
    once, so a markup-only guard leaves ordinary tokens as they came."""
    return "<" in word or "](" in word
