"""Personal-data and secret detectors for the compliance governor.

Pure functions over a string: no Django, no I/O. Every detector pairs a
candidate pattern with a validation step (checksum, registry range, context
word or decoded structure) so that look-alike numbers are not reported.

Kinds reported (``Finding.kind``):

- ``card``: 13-19 digit payment card numbers, contiguous or in the usual
  4-4-4-4(-3) / 4-6-5 / 4-6-4 groups, passing the Luhn check.
- ``ssn``: US Social Security numbers ``AAA-GG-SSSS``, or 9 digits right after
  "SSN"/"social security number"; area 000, 666 and 900-999, group 00 and
  serial 0000 are never issued and are rejected.
- ``iban``: IBANs from countries in ``IBAN_LENGTHS``, spaces allowed, with the
  country's exact length and a valid ISO 7064 mod-97 check.
- ``email``: addresses with a dot-atom local part and a dotted domain; not the
  ``user:password@host`` of a URL, nor an SSH remote ``git@host:path``.
- ``phone``: international ``+<country><number>`` (8-15 digits, separators
  allowed) and North American ``(555) 123-4567`` / ``555-123-4567`` forms.
- ``secret``: credentials of known formats (see ``_SECRET_PATTERNS``): this product's,
  OpenAI, Anthropic, AWS, GitHub, GitLab, Slack tokens and webhooks, Google, npm,
  SendGrid, Stripe restricted keys, Twilio API keys, JWTs, PEM private keys, bearer tokens,
  passwords in URLs (``scheme://user:password@host``) and ``password=``/``secret=``/
  ``token=`` assignments whose value looks random (two character classes, 3 bits of
  entropy per character); documentation placeholders are not reported.
- ``health_id``: US Medicare Beneficiary Identifiers (CMS format), medical
  record numbers after "MRN"/"medical record number", NHS numbers (mod-11
  check, with "NHS" written shortly before) and ICD-10 codes near diagnosis
  wording.

``scan`` runs them all and, where spans of different kinds overlap, keeps the
more specific kind (``KIND_PRIORITY``): digits inside an IBAN are not also a
card, a 10-digit NHS number is not also a phone number.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "IBAN_LENGTHS",
    "ICD10_CONTEXT_CHARS",
    "ICD10_RE",
    "KIND_PRIORITY",
    "Finding",
    "find_cards",
    "find_emails",
    "find_health_ids",
    "find_ibans",
    "find_phones",
    "find_secrets",
    "find_ssns",
    "iban_is_valid",
    "is_valid_email",
    "luhn_is_valid",
    "nhs_number_is_valid",
    "redact",
    "scan",
    "scan_uncached",
]


@dataclass(frozen=True, order=True)
class Finding:
    """A detected span ``text[start:end]`` of the given kind."""

    kind: str
    start: int
    end: int


# Most specific first: on overlap the earlier kind wins.
KIND_PRIORITY = ("secret", "iban", "card", "ssn", "health_id", "email", "phone")


# --- payment cards -----------------------------------------------------------

# Not preceded by a digit group nor followed by a full 4-digit group, so that a
# run inside a longer number (an IBAN's BBAN, an order id) is not read as a card,
# while "4111 1111 1111 1111 12/27" (card then expiry) still is.
_NUM_BEFORE = r"(?<![\w.,-])(?<!\d[ -])"
_NUM_AFTER = r"(?![\w-])(?![ -]\d{4})(?![.,]\d)"
_CARD_RE = re.compile(
    _NUM_BEFORE
    + r"(?:\d{13,19}"
    + r"|\d{4}(?P<s1>[ -])\d{4}(?:(?P=s1)\d{4}){1,2}(?:(?P=s1)\d{3})?"
    + r"|\d{4}(?P<s2>[ -])\d{6}(?P=s2)\d{4,5})"
    + _NUM_AFTER
)


def luhn_is_valid(digits: str) -> bool:
    """Luhn (mod 10) check of a string of digits."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_cards(text: str) -> list[Finding]:
    """Payment card numbers (13-19 digits, Luhn-valid)."""
    found = []
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        # All-same digits ("0000 0000 0000 0000") pass Luhn but are placeholders.
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_is_valid(digits):
            found.append(Finding("card", m.start(), m.end()))
    return found


# --- US social security numbers ------------------------------------------------

_SSN_DASHED_RE = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])")
_SSN_WORDED_RE = re.compile(
    r"\b(?:SSN|social\s+security(?:\s+(?:number|no\.?|#))?)\s*(?:#|no\.?|number)?\s*[:=#]?\s*"
    r"(?<![\w-])(\d{3})[ -]?(\d{2})[ -]?(\d{4})(?![\w-])",
    re.IGNORECASE,
)
# Published in advertising (a wallet insert, a 1940s Woolworth's card), never valid.
_SSN_KNOWN_INVALID = frozenset({"078051120", "219099999"})


def _ssn_is_valid(area: str, group: str, serial: str) -> bool:
    if area == "000" or area == "666" or area[0] == "9":
        return False
    if group == "00" or serial == "0000":
        return False
    return area + group + serial not in _SSN_KNOWN_INVALID


def find_ssns(text: str) -> list[Finding]:
    """US SSNs: dashed anywhere, undashed only after SSN wording."""
    spans = set()
    for m in _SSN_DASHED_RE.finditer(text):
        if _ssn_is_valid(*m.groups()):
            spans.add((m.start(), m.end()))
    for m in _SSN_WORDED_RE.finditer(text):
        if _ssn_is_valid(*m.groups()):
            spans.add((m.start(1), m.end(3)))
    return [Finding("ssn", s, e) for s, e in sorted(spans)]


# --- IBANs ---------------------------------------------------------------------

# Total IBAN length per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

_IBAN_START_RE = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z]{2}\d{2})")


def iban_is_valid(iban: str) -> bool:
    """Country length and mod-97 check of an IBAN (spaces ignored, any case)."""
    compact = iban.replace(" ", "").upper()
    if not compact.isascii() or not compact.isalnum():
        return False
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban_end(text: str, start: int, length: int) -> int | None:
    """End of an IBAN of ``length`` characters starting at ``start``, single spaces allowed."""
    count, i = 0, start
    while i < len(text) and count < length:
        ch = text[i]
        if ch.isascii() and ch.isalnum():
            count += 1
        elif not (ch == " " and count >= 2 and i + 1 < len(text) and text[i + 1] != " "):
            break
        i += 1
    if count != length:
        return None
    # An IBAN that runs on ("DE89...3000" + "12") is a different, longer string.
    if i < len(text) and text[i].isascii() and text[i].isalnum():
        return None
    return i


def find_ibans(text: str) -> list[Finding]:
    """IBANs with a known country code, the country's length and a valid mod-97 check."""
    found = []
    for m in _IBAN_START_RE.finditer(text):
        start = m.start()
        length = IBAN_LENGTHS.get(text[start : start + 2].upper())
        if length is None:
            continue
        end = _iban_end(text, start, length)
        if end is not None and iban_is_valid(text[start:end]):
            found.append(Finding("iban", start, end))
    return found


# --- e-mail --------------------------------------------------------------------

_EMAIL_PATTERN = r"[A-Za-z0-9._%+'-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}"
_EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+'-])" + _EMAIL_PATTERN + r"(?![A-Za-z0-9-])")
_EMAIL_FULL_RE = re.compile(_EMAIL_PATTERN)


def _email_parts_ok(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    if not local or len(local) > 64 or len(address) > 254:
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return all(
        0 < len(label) <= 63 and not label.startswith("-") and not label.endswith("-")
        for label in domain.split(".")
    )


def is_valid_email(address: str) -> bool:
    """Whether ``address`` is a plausible e-mail address (dot-atom local part, dotted domain)."""
    return bool(_EMAIL_FULL_RE.fullmatch(address)) and _email_parts_ok(address)


_TOKEN_BREAK_RE = re.compile(r"[\s\"'<>()\[\]`]")
_HOST_PATH_AFTER_RE = re.compile(r"[:/][\w~./-]")


def _is_userinfo_or_ssh(text: str, start: int, end: int) -> bool:
    """``user:pass@host`` in a URL, or ``git@host:path`` (scp-style SSH): not addresses."""
    token = _TOKEN_BREAK_RE.split(text[max(0, start - 200) : start])[-1]
    if "://" in token:
        return True
    if _HOST_PATH_AFTER_RE.match(text, end) is None:
        return False
    return not token or token.endswith(":")


def find_emails(text: str) -> list[Finding]:
    """E-mail addresses (not the user and password of a URL, nor an SSH remote)."""
    return [
        Finding("email", m.start(), m.end())
        for m in _EMAIL_RE.finditer(text)
        if _email_parts_ok(m.group()) and not _is_userinfo_or_ssh(text, m.start(), m.end())
    ]


# --- phone numbers ---------------------------------------------------------------

# "+" then digits, each optionally preceded by one separator, one optional
# "(area)" group; the digit count (8-15, E.164) is checked afterwards.
_PHONE_INTL_RE = re.compile(r"(?<![\w+])\+[1-9](?:[ .-]?(?:\(\d{1,4}\)|\d)){6,20}(?!\w)")
# North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-555-123-4567.
# Separators are required, so plain runs of digits are never phone numbers.
_PHONE_NANP_RE = re.compile(
    r"(?<![\w(+-])(?<!\d[ .-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"(?![\w-])(?![ .-]\d)"
)


def find_phones(text: str) -> list[Finding]:
    """Phone numbers: international E.164-style and North American national formats."""
    found = []
    for m in _PHONE_INTL_RE.finditer(text):
        if 8 <= sum(ch.isdigit() for ch in m.group()) <= 15:
            found.append(Finding("phone", m.start(), m.end()))
    found.extend(Finding("phone", m.start(), m.end()) for m in _PHONE_NANP_RE.finditer(text))
    return sorted(found)


# --- secrets --------------------------------------------------------------------

_ID_BEFORE = r"(?<![A-Za-z0-9_-])"
_ID_AFTER = r"(?![A-Za-z0-9_-])"


# Words that mark a documentation placeholder ("sk-proj-your-key-here", "<password>").
_PLACEHOLDER_RE = re.compile(
    r"your|here|example|placeholder|replace|xxxx|\*\*\*|\.\.\.|dummy|redacted|insert|"
    r"changeme|sample|secret_?key|api_?key|token_?here|<|>|\$\{|\{\{",
    re.IGNORECASE,
)


def _not_placeholder(body: str) -> bool:
    # Documentation placeholders ("sk_live_xxxxxxxx...", "sk-your-key-here") are not
    # credentials.
    return len(set(body)) >= 6 and not _PLACEHOLDER_RE.search(body)


def _entropy(value: str) -> float:
    """Shannon entropy of ``value`` in bits per character."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _random_enough(body: str) -> bool:
    """A value of a ``password=``/``token=`` assignment that looks chosen, not a word or a
    placeholder: 8+ characters of two or more classes, at 3 bits of entropy per character."""
    classes = sum(
        bool(re.search(pattern, body)) for pattern in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z\d]")
    )
    return classes >= 2 and _entropy(body) >= 3.0 and _not_placeholder(body)


# Placeholder passwords in URLs of documentation ("postgres://user:pass@host/db").
_URL_PASSWORD_PLACEHOLDERS = frozenset({
    "pass", "password", "passwd", "pwd", "secret", "changeme", "example", "test", "user",
    "username", "x", "xx", "xxx", "xxxx", "****", "***", "...",
})  # fmt: skip


def _url_password_ok(userinfo: str) -> bool:
    user, _, password = userinfo.partition(":")
    if password.lower() in _URL_PASSWORD_PLACEHOLDERS or len(password) < 4:
        return False
    if password == user:  # a well-known default (guest:guest, admin:admin)
        return False
    return not _PLACEHOLDER_RE.search(password) and not password.startswith("$")


# Keys whose value in an assignment is a credential: password=..., "api_key": "...".
_ASSIGNED_KEY = (
    r"(?:password|passwd|pwd|pass|secret|client[_-]?secret|api[_-]?key|"
    r"apikey|access[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|token|"
    r"private[_-]?key|secret[_-]?key|credentials?)"
)


def _jwt_header_ok(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


# (pattern, validator of the captured body). Group "body" is the random part.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
    # This product's own API keys: sk_<env>_<random>.
    (re.compile(_ID_BEFORE + r"sk_[a-z]{2,12}_(?P<body>[A-Za-z0-9_-]{20,})"), _not_placeholder),
    # OpenAI (sk-..., sk-proj-...) and Anthropic (sk-ant-...).
    (
        re.compile(_ID_BEFORE + r"sk-(?:proj-|ant-)?(?P<body>[A-Za-z0-9_-]{20,})"),
        _not_placeholder,
    ),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    (
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)(?P<body>[0-9A-Z]{16})(?![A-Za-z0-9])"),
        _not_placeholder,
    ),
    # GitHub tokens.
    (
        re.compile(_ID_BEFORE + r"gh[pousr]_(?P<body>[A-Za-z0-9]{36,255})" + _ID_AFTER),
        _not_placeholder,
    ),
    (
        re.compile(_ID_BEFORE + r"github_pat_(?P<body>[A-Za-z0-9_]{22,255})" + _ID_AFTER),
        _not_placeholder,
    ),
    # Slack tokens.
    (re.compile(_ID_BEFORE + r"xox[abpr]-(?P<body>[A-Za-z0-9-]{10,})"), _not_placeholder),
    # Google API keys.
    (
        re.compile(_ID_BEFORE + r"AIza(?P<body>[0-9A-Za-z_-]{35})" + _ID_AFTER),
        _not_placeholder,
    ),
    # JWTs: the header must decode to a JSON object naming its algorithm.
    (
        re.compile(
            _ID_BEFORE
            + r"(?P<body>eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,})"
            + _ID_AFTER
        ),
        _jwt_header_ok,
    ),
    # Credentials in a URL: scheme://user:password@host (the user and password).
    (
        re.compile(
            r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://(?P<secret>(?P<body>[^\s:/?#@\"'<>]{0,64}:"
            r"[^\s/?#@\"'<>]{1,128}))@"
            r"(?=[A-Za-z0-9\[])"
        ),
        _url_password_ok,
    ),
    # Slack incoming webhooks.
    (
        re.compile(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/"
            r"(?P<body>T[A-Z0-9]{6,}/[A-Z0-9]{6,}/[A-Za-z0-9]{16,})"
        ),
        _not_placeholder,
    ),
    # npm access tokens.
    (re.compile(_ID_BEFORE + r"npm_(?P<body>[A-Za-z0-9]{36})" + _ID_AFTER), _not_placeholder),
    # SendGrid API keys.
    (
        re.compile(
            _ID_BEFORE + r"SG\.(?P<body>[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64})" + _ID_AFTER
        ),
        _not_placeholder,
    ),
    # Stripe restricted keys and webhook signing secrets (secret keys are sk_live_...).
    (
        re.compile(_ID_BEFORE + r"(?:rk_(?:live|test)|whsec)_(?P<body>[A-Za-z0-9]{24,})"),
        _not_placeholder,
    ),
    # GitLab tokens (personal, deploy, runner, trigger, CI job, feed, OAuth app secrets).
    (
        re.compile(
            _ID_BEFORE
            + r"(?:glpat|gldt|glrt|glptt|glcbt|glft|glsoat|gloas|glimt|glagent)-"
            + r"(?P<body>[A-Za-z0-9_-]{20,})"
            + _ID_AFTER
        ),
        _not_placeholder,
    ),
    # Twilio API keys (SK + 32 hex) and auth tokens named as such.
    (re.compile(r"(?<![A-Za-z0-9])SK(?P<body>[0-9a-f]{32})(?![A-Za-z0-9])"), _not_placeholder),
    # Bearer tokens in an Authorization header.
    (
        re.compile(
            r"\bBearer\s+(?P<secret>(?P<body>[A-Za-z0-9._~+/-]{20,}=*))(?![A-Za-z0-9._~+/=-])"
        ),
        _random_enough,
    ),
    # Generic assignments: password=..., "client_secret": "...", TOKEN: ...
    (
        re.compile(
            r"(?:(?<![A-Za-z0-9])|(?<=[_-]))" + _ASSIGNED_KEY + r"[\"']?[ \t]*(?:=|:)[ \t]*[\"']?"
            r"(?P<secret>(?P<body>[^\s\"'`,;<>(){}\[\]]{8,200}))",
            re.IGNORECASE,
        ),
        _random_enough,
    ),
    # PEM private keys: the whole block when its END line is present, else the header.
    (
        re.compile(
            r"-----BEGIN (?P<body>(?:[A-Z0-9]+ )*PRIVATE KEY)-----"
            r"(?:[\s\S]*?-----END (?P=body)-----)?"
        ),
        bool,
    ),
)


# Something every secret pattern needs; most texts have none, and one search is cheaper
# than running every pattern.
_SECRET_HINT_RE = re.compile(
    r"sk[_-]|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abpr]-|AIza|eyJ|://|npm_|SG\.|rk_|whsec_|"
    r"gl[a-z]{2,6}-|SK[0-9a-f]{8}|Bearer|-----BEGIN|pass|pwd|secret|token|key|credential",
    re.IGNORECASE,
)


def find_secrets(text: str) -> list[Finding]:
    """API keys, tokens, passwords and private keys of well-known formats. The finding is
    the whole match, or only its ``secret`` group where the pattern has one (the key name
    of an assignment, the host of a URL are not secret)."""
    if _SECRET_HINT_RE.search(text) is None:
        return []
    found = set()
    for pattern, is_valid in _SECRET_PATTERNS:
        part = "secret" if "secret" in pattern.groupindex else 0
        for m in pattern.finditer(text):
            if is_valid(m.group("body")):
                found.add(Finding("secret", *m.span(part)))
    return sorted(found)


# --- health identifiers -----------------------------------------------------------

# Medicare Beneficiary Identifier: C A AN N - A AN N - A A N N, letters without S L O I B Z.
_MBI_ALPHA = "[AC-HJKMNP-RT-Y]"
_MBI_ALNUM = "[AC-HJKMNP-RT-Y0-9]"
_MBI_RE = re.compile(
    rf"(?<![A-Za-z0-9-])[1-9]{_MBI_ALPHA}{_MBI_ALNUM}\d(?P<d>-?){_MBI_ALPHA}{_MBI_ALNUM}\d"
    rf"(?P=d){_MBI_ALPHA}{{2}}\d{{2}}(?![A-Za-z0-9-])"
)
_MRN_RE = re.compile(
    r"\b(?:MRN|medical\s+record(?:\s+(?:number|no\.?|#))?)\s*[:#=]?\s*"
    r"(?P<id>[A-Za-z0-9][A-Za-z0-9-]{3,19})(?![A-Za-z0-9-])",
    re.IGNORECASE,
)
_NHS_RE = re.compile(r"(?<![\w-])\d{3}([ -]?)\d{3}\1\d{4}(?![\w-])")
_NHS_WORD_RE = re.compile(r"\bNHS\b", re.IGNORECASE)
# ICD-10: letter (not U), two characters, optional ".<1-4>" subcategory.
ICD10_RE = re.compile(r"(?<![A-Za-z0-9.])[A-TV-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?(?![A-Za-z0-9])")
_DIAGNOSIS_WORD_RE = re.compile(r"\b(?:diagnos\w*|dx|icd(?:-?10)?|condition)\b", re.IGNORECASE)
_CONTEXT_CHARS = 40
ICD10_CONTEXT_CHARS = _CONTEXT_CHARS  # an ICD-10 code's diagnosis wording is this near


def nhs_number_is_valid(digits: str) -> bool:
    """NHS number mod-11 check (10 digits, weights 10..2, check digit last)."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    remainder = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True)) % 11
    check = (11 - remainder) % 11
    return check != 10 and check == int(digits[9])


def find_health_ids(text: str) -> list[Finding]:
    """Medicare MBIs, MRNs after their label, NHS numbers and ICD-10 codes near diagnosis words."""
    spans = {(m.start(), m.end()) for m in _MBI_RE.finditer(text)}
    for m in _MRN_RE.finditer(text):
        # Require digits so "MRN: pending" or "medical record review" is not an id.
        if sum(ch.isdigit() for ch in m.group("id")) >= 4:
            spans.add((m.start("id"), m.end("id")))
    for m in _NHS_RE.finditer(text):
        before = text[max(0, m.start() - _CONTEXT_CHARS) : m.start()]
        digits = re.sub(r"[ -]", "", m.group())
        if _NHS_WORD_RE.search(before) and nhs_number_is_valid(digits):
            spans.add((m.start(), m.end()))
    for m in ICD10_RE.finditer(text):
        window = text[max(0, m.start() - _CONTEXT_CHARS) : m.end() + _CONTEXT_CHARS]
        if _DIAGNOSIS_WORD_RE.search(window):
            spans.add((m.start(), m.end()))
    return [Finding("health_id", s, e) for s, e in sorted(spans)]


# --- all together -----------------------------------------------------------------

_DETECTORS: dict[str, Callable[[str], list[Finding]]] = {
    "secret": find_secrets,
    "iban": find_ibans,
    "card": find_cards,
    "ssn": find_ssns,
    "health_id": find_health_ids,
    "email": find_emails,
    "phone": find_phones,
}


_DIGIT_RE = re.compile(r"\d")
_NEED_A_DIGIT = frozenset({"iban", "card", "ssn", "health_id", "phone"})


def _overlaps(a: Finding, b: Finding) -> bool:
    return a.start < b.end and b.start < a.end


@lru_cache(maxsize=64)
def scan(text: str) -> tuple[Finding, ...]:
    """Every finding in ``text``, overlaps resolved by ``KIND_PRIORITY``, sorted by position.

    Cached because each governor rule asks for the same text's findings.
    """
    return scan_uncached(text)


def scan_uncached(text: str, kinds: Iterable[str] = KIND_PRIORITY) -> tuple[Finding, ...]:
    """``scan`` without its cache (for texts seen once), limited to ``kinds``."""
    wanted = frozenset(kinds)
    # Every kind but secrets needs a digit, an e-mail address an "@": prose has neither.
    if _DIGIT_RE.search(text) is None:
        wanted -= _NEED_A_DIGIT
    if "@" not in text:
        wanted -= {"email"}
    kept: list[Finding] = []
    for kind in KIND_PRIORITY:
        if kind not in wanted:
            continue
        for finding in _DETECTORS[kind](text):
            if not any(_overlaps(finding, other) for other in kept):
                kept.append(finding)
    return tuple(sorted(kept, key=lambda f: (f.start, f.end, f.kind)))


def redact(text: str, findings: Iterable[Finding]) -> str:
    """Replace each finding's span with ``[REDACTED:<kind>]``; overlapping spans are merged.

    A merged span takes the kind of the finding that starts first (the longest on a tie).
    """
    ordered = sorted(
        (f for f in findings if f.start < f.end), key=lambda f: (f.start, -f.end, f.kind)
    )
    merged: list[list] = []  # [start, end, kind]
    for f in ordered:
        start, end = max(0, f.start), min(len(text), f.end)
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, f.kind])
    parts, cursor = [], 0
    for start, end, kind in merged:
        parts.append(text[cursor:start])
        parts.append(f"[REDACTED:{kind}]")
        cursor = end
    parts.append(text[cursor:])
    return "".join(parts)
