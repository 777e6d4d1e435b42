"""Prompt-injection and markup-injection (XSS) detectors for the compliance governor.

Pure functions over a string: no Django, no I/O. Each pattern names what it found
(``Match.label``), so an explanation can say what matched without quoting the text.

``find_prompt_injection``: instruction overrides ("ignore all previous instructions"),
requests to reveal the system prompt or hidden instructions, role-play jailbreaks, role
and delimiter tags (``</user>``, ``<system>``, ``<|im_start|>``, ``### SYSTEM``) and
instructions addressed to an AI inside quoted material ("Note to the AI: ...").
Ordinary requests stay clean: "please ignore my previous message", "how do I write a good
system prompt?", "act as a tutor".

``find_markup``: script-like tags (``<script>``, ``<iframe>``, ``<object>``, ``<embed>``),
tags with an event-handler attribute (``onerror=``), and ``javascript:``/``vbscript:``/
active ``data:`` URLs in an attribute or a Markdown link. Talk about HTML ("use the
``<div>`` element", "escape ``<`` in attributes") stays clean. ``neutralise_markup`` turns
each such span inert (tags escaped as text, URLs prefixed with ``unsafe:``, as Angular's
sanitiser does); it is idempotent and its result has no markup findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Match",
    "find_markup",
    "find_prompt_injection",
    "make_inert",
    "neutralise_markup",
]


@dataclass(frozen=True, order=True)
class Match:
    """A detected span ``text[start:end]``; ``label`` says what it is, for explanations."""

    start: int
    end: int
    kind: str
    label: str


def _find(patterns: tuple[tuple[str, re.Pattern[str]], ...], kind: str, text: str) -> list[Match]:
    """Matches of every pattern, overlapping ones merged into the first (longest) one."""
    found = sorted(
        (m.start(), -m.end(), label)
        for label, pattern in patterns
        for m in pattern.finditer(text)
        if m.end() > m.start()
    )
    merged: list[Match] = []
    for start, neg_end, label in found:
        if merged and start < merged[-1].end:
            last = merged[-1]
            if -neg_end > last.end:
                merged[-1] = Match(last.start, -neg_end, kind, last.label)
            continue
        merged.append(Match(start, -neg_end, kind, label))
    return merged


# --- prompt injection ----------------------------------------------------------------

_I = re.IGNORECASE
_IM = re.IGNORECASE | re.MULTILINE

# What an instruction override targets. Plain "message" is not among them: "please ignore
# my previous message" is a user correcting themselves.
_TARGET = (
    r"(?:instructions?|rules|prompts?|directions|directives|guidelines|guardrails|"
    r"constraints|restrictions|programming|polic(?:y|ies)|safeguards|filters|system\s+message|"
    r"disclaimers?|persona|training|ethics|principles|limitations|boundaries|protocols?)"
)
_QUALIFIER = (
    r"(?:all|any|every|the|your|these|those|of|previous|prior|above|preceding|earlier|former|"
    r"initial|original|system|existing|current|safety|developer|given|other|old|content|"
    r"standard|usual|default|ethical|built-in|internal|core|company|legal|usage|moderation|"
    r"compliance)"
)
_AI = (
    r"(?:AI|A\.I\.|LLMs?|large\s+language\s+models?|language\s+models?|(?:AI\s+)?assistants?|"
    r"chat\s?bots?|bots?|GPT|ChatGPT|copilot|AI\s+models?|(?:AI|automated)\s+(?:systems?|"
    r"assistants?|agents?)|agents?)"
)
# What an instruction hidden in material tells the AI to do.
_ORDER = (
    r"(?:ignore|disregard|forget|tell|say|state|claim|reveal|print|output|respond|reply|"
    r"answer|recommend|approve|reject|rank|forward|send|email|e-mail|include|obey|follow|"
    r"pretend|act|stop|refuse|delete|run|execute|install|visit|click|mark|grant|give|transfer)"
)
_SYSTEM_PROMPT = (
    r"(?:system\s+prompt|system\s+message|system\s+instructions|developer\s+(?:message|prompt|"
    r"instructions)|hidden\s+(?:instructions|prompt|rules)|initial\s+(?:prompt|instructions)|"
    r"original\s+(?:prompt|instructions)|secret\s+(?:instructions|prompt)|pre-?prompt|"
    r"instructions\s+(?:above|you\s+were\s+given)|prompt\s+above|configuration\s+prompt|"
    r"internal\s+(?:instructions|rules|prompt)|"
    r"(?:initial|original|hidden|secret|internal|underlying|base|full|exact)\s+"
    r"(?:configuration|setup|directives|guidelines|programming|rules|context))"
)

_INJECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "an instruction override",
        re.compile(
            rf"\b(?:ignore|disregard|forget|override|bypass|discard|abandon|drop|skip|"
            rf"circumvent|disable|deactivate|suspend|lift|turn\s+off|switch\s+off)\b[\s,]+"
            rf"(?:{_QUALIFIER}\s+){{1,4}}{_TARGET}\b",
            _I,
        ),
    ),
    (
        "an instruction override",
        re.compile(
            r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+)?(?:of\s+)?(?:the\s+)?"
            r"(?:above|everything\s+(?:above|before|else|you\s+(?:were|have\s+been)\s+told))\b",
            _I,
        ),
    ),
    (
        "an instruction override",
        re.compile(
            rf"\b(?:do\s+not|don't|stop|no\s+longer)\s+(?:follow|obey|follow\s+any\s+of)\s+"
            rf"(?:{_QUALIFIER}\s+){{1,3}}{_TARGET}\b",
            _I,
        ),
    ),
    (
        "an instruction override",
        re.compile(
            rf"\byour\s+(?:new|real|actual|updated)\s+(?:instructions|task|role|orders|"
            rf"objective)\s+(?:is|are)\b|\bnew\s+(?:system\s+)?(?:instructions|task|role|"
            rf"persona|objective|goal|orders|rules)\s*:|"
            rf"\b(?:previous|prior|above|original)\s+{_TARGET}\s+(?:are|is)\s+(?:now\s+)?"
            rf"(?:void|cancelled|canceled|obsolete|revoked|no\s+longer\s+valid)",
            _I,
        ),
    ),
    (
        "a request to reveal the system prompt",
        re.compile(
            rf"\b(?:reveal|print|show|display|output|repeat|recite|leak|dump|expose|disclose|"
            rf"tell\s+me|give\s+me|share|paste|spell\s+out|write\s+(?:out|down)|copy|"
            rf"what(?:'s|\s+is|\s+are|\s+were))\b[^.?!\n]{{0,40}}?\b(?:your|its)\s+"
            rf"(?:(?:full|entire|original|initial|hidden|secret|internal|exact|complete|"
            rf"real|whole)\s+){{0,3}}{_SYSTEM_PROMPT}",
            _I,
        ),
    ),
    (
        "a request to reveal the system prompt",
        re.compile(
            rf"\b(?:reveal|print|dump|leak|expose|disclose|repeat|recite|output)\s+(?:the|all)\s+"
            rf"(?:(?:full|entire|exact|complete)\s+)?(?:{_SYSTEM_PROMPT}|(?:original|initial|"
            rf"hidden|secret|internal|system)\s+instructions)|\brepeat\s+(?:the\s+words|everything|"
            rf"the\s+text)\s+above\b|\bwhat\s+(?:were|was)\s+you\s+told\s+before\b",
            _I,
        ),
    ),
    (
        "a role-play jailbreak",
        re.compile(
            r"\byou\s+are\s+(?:now\s+)?(?:an?\s+)?(?:DAN\b|in\s+(?:developer|god|jailbreak|DAN)\s+"
            r"mode|jailbroken|unrestricted|unfiltered|uncensored|free\s+(?:of|from)\s+(?:all\s+|any\s+)?"
            r"(?:restrictions|rules|guidelines|limitations))|\bdo\s+anything\s+now\b|"
            r"\b(?:enter|enable|activate|switch\s+to|turn\s+on)\s+(?:DAN|god|jailbreak|"
            r"unrestricted|developer)\s+mode\b|\bjailbreak(?:ed)?\s+mode\b",
            _I,
        ),
    ),
    (
        "a role-play jailbreak",
        re.compile(
            r"\b(?:pretend|imagine|act\s+as\s+if|behave\s+as\s+if|role-?play(?:\s+as)?|from\s+now"
            r"\s+on)\b[^.\n]{0,60}?\b(?:you\s+)?(?:have|had|with|are|were)\s+(?:no|zero|not\s+"
            r"bound\s+by\s+any)\s+(?:\w+\s+)?(?:restrictions|rules|filters|guidelines|limits|"
            r"limitations|censorship|ethics|morals|boundaries)|\bact\s+as\s+(?:an?\s+)?"
            r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil|amoral|rogue)\b|"
            r"\byou\s+(?:have|has)\s+no\s+(?:restrictions|rules|limits|filters|guidelines|"
            r"ethical\s+guidelines)\b|\b(?:broken|break|breaking|freed?)\s+(?:free\s+)?(?:of|from)\s+"
            r"(?:\w+\s+){0,3}(?:confines|shackles|chains|restrictions|rules|limitations|filters)\b|"
            r"\b(?:no\s+longer|not)\s+bound\s+by\s+(?:\w+\s+){0,3}(?:rules|restrictions|"
            r"guidelines|policies|limitations)\b|"
            r"\b(?:you|AI|assistant|model|bot|chatbot)\b[^.\n]{0,60}?\b(?:without|with\s+no|free\s+of)"
            r"\s+(?:any\s+)?(?:filters?|restrictions|limitations|censorship|guardrails|content\s+"
            r"polic(?:y|ies)|ethical\s+(?:guidelines|constraints|limits))\b",
            _I,
        ),
    ),
    (
        "a role or delimiter tag",
        re.compile(
            r"</?\s*(?:system|user|assistant|human|instructions?|sys|admin|developer)\s*>|"
            r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|"
            r"start_header_id|end_header_id)\s*\|>|\[/?INST\]|<</?SYS>>|"
            r"^[ \t]*#{2,}[ \t]*(?:system|new\s+instructions?|instructions?|admin|developer)"
            r"\b[ \t]*(?:prompt|message|override)?[ \t]*:?[ \t]*$|"
            r"^[ \t]*\[(?:system|admin|developer)(?:[ \t]+(?:message|note|override|prompt))?\]|"
            r"(?:^|(?<=[\"'(\[]))[ \t]*(?:system|admin)(?:[ \t]+(?:override|message|prompt|note))?"
            r"[ \t]*:[ \t]*"
            r"(?=(?:ignore|disregard|forget|you\s+(?:are|must|will|should|have)|new\s+"
            r"instructions|from\s+now|reveal|print|output|do\s+not|don't))|"
            r"\b(?:system|admin|developer|security)\s+override\b|"
            r"\b(?:BEGIN|END)\s+(?:OF\s+)?(?:SYSTEM\s+PROMPT|USER\s+INPUT|INSTRUCTIONS)\b",
            _IM,
        ),
    ),
    (
        "an instruction addressed to the AI",
        re.compile(
            rf"\b(?:note|message|instructions?|attention|reminder|command|request)\s+(?:to|for)\s+"
            rf"(?:the\s+|any\s+|all\s+)?{_AI}s?\b|\bif\s+you\s+are\s+(?:an?\s+)?{_AI}\b|"
            rf"\b(?:to|for)\s+(?:any|all|every|the)\s+{_AI}\s+(?:reading|processing|"
            rf"summari[sz]ing|parsing|analy[sz]ing|reviewing|screening|scanning)\b|"
            rf"\b(?:attention|notice|warning|important|psst)\s*[,:!]?\s+(?:to\s+)?(?:the\s+|any\s+|"
            rf"all\s+)?{_AI}\b|"
            rf"\b{_AI}s?\s+(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|"
            rf"reviewing)\s+this\b|\b(?:when|while|before)\s+summari[sz]ing\s+this\b[^.\n]"
            rf"{{0,60}}?\b(?:ignore|instead|do\s+not|don't|also|forward|send|tell|say|include)\b|"
            rf"\b(?:the|any|all|every)\s+{_AI}\s+(?:must|should|shall|will|needs?\s+to|has\s+to|"
            rf"is\s+(?:to|required\s+to))\s+(?:now\s+|always\s+|only\s+|immediately\s+)?"
            rf"{_ORDER}\b|"
            rf"(?:^|(?<=[\"'(\[])|(?<=--))[ \t]*(?:dear\s+|hey\s+)?{_AI}\s*[:,][ \t]*"
            rf"(?=(?:please\s+)?(?:ignore|disregard|"
            rf"forget|you\s+must|do\s+not|don't|approve|send|forward|reveal|print|output|always|"
            rf"never|reply|respond|tell\s+the\s+user)\b)",
            _IM,
        ),
    ),
)


def find_prompt_injection(text: str) -> list[Match]:
    """Spans that try to steer the model away from its instructions."""
    return _find(_INJECTION_PATTERNS, "prompt_injection", text)


# --- markup injection ----------------------------------------------------------------

# A tag starts with "<" and a letter (or "</" and a letter), as browsers read it: "a < b"
# is text. Its attributes are bounded.
_TAG_BODY = r"[^<>]{0,500}"
_ACTIVE_DATA = r"data\s*:\s*(?:text/html|text/javascript|application/(?:x-)?javascript|image/svg)"
_ACTIVE_SCHEME = rf"(?:java\s*script|vb\s*script|livescript)\s*:|{_ACTIVE_DATA}"
_URL_ATTR = r"(?:href|src|action|formaction|xlink:href|data|srcdoc|poster|background|lowsrc)"

_MARKUP_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "a script-like tag",
        re.compile(rf"</?(?:script|iframe|frame|frameset|object|embed|applet)\b{_TAG_BODY}>?", _I),
    ),
    (
        "a tag with an event-handler attribute",
        re.compile(rf"<[a-z][\w:-]*\b[^<>]{{0,500}}?[\s/\"']on[a-z]{{3,}}\s*={_TAG_BODY}>?", _I),
    ),
    (
        "a tag with an active URL",
        re.compile(
            rf"<[a-z][\w:-]*\b[^<>]{{0,500}}?\b{_URL_ATTR}\s*=\s*[\"']?\s*(?:{_ACTIVE_SCHEME})"
            rf"{_TAG_BODY}>?",
            _I,
        ),
    ),
    (
        "a tag that redirects or rebases the page",
        re.compile(
            rf"<(?:meta\b[^<>]{{0,500}}?http-equiv|base\b[^<>]{{0,500}}?href){_TAG_BODY}>?", _I
        ),
    ),
    (
        "an active URL in a link",
        re.compile(
            rf"(?<=\]\()\s*(?:{_ACTIVE_SCHEME})|(?<=<)(?:{_ACTIVE_SCHEME})|"
            rf"(?<![\w:])javascript\s*:\s*[\w.$]+\s*\(",
            _I,
        ),
    ),
)

_SCHEME = re.compile(rf"(?<!unsafe:)(?:{_ACTIVE_SCHEME})", _I)


_MARKUP_HINT = re.compile(r"<|script\s*:|data\s*:", re.IGNORECASE)


def find_markup(text: str) -> list[Match]:
    """Markup that would run script or navigate away if a browser rendered the text."""
    if _MARKUP_HINT.search(text) is None:
        return []
    return _find(_MARKUP_PATTERNS, "markup", text)


def make_inert(span: str) -> str:
    """A markup span made inert: angle brackets escaped, active URL schemes prefixed."""
    span = span.replace("<", "&lt;").replace(">", "&gt;")
    return _SCHEME.sub(lambda m: "unsafe:" + m.group(), span)


def neutralise_markup(text: str, matches: list[Match] | None = None) -> str:
    """``text`` with each markup span made inert: tags escaped, active URLs prefixed."""
    if matches is None:
        matches = find_markup(text)
    if not matches:
        return text
    parts, cursor = [], 0
    for m in matches:
        parts.append(text[cursor : m.start])
        parts.append(make_inert(text[m.start : m.end]))
        cursor = m.end
    parts.append(text[cursor:])
    return "".join(parts)
