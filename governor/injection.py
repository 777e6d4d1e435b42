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
from collections.abc import Callable
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
    return _merge(found, kind)


def _merge(found: list[tuple[int, int, str]], kind: str) -> list[Match]:
    """Sorted (start, -end, label) spans, overlapping ones merged into the first one."""
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
#
# Families of signals rather than memorised sentences. Each family is a few small
# vocabularies (who is addressed, what is overridden or asked for, in what context) put
# together by a pattern; a family may also have a veto for the context that makes the same
# words ordinary ("how do I override the default rules", "the policy I sent"). Each label
# says which family and which signal matched.

_I = re.IGNORECASE
_IM = re.IGNORECASE | re.MULTILINE

# A run of words that does not leave the sentence (a dot inside a URL or "v2.1" stays).
_GAP = r"(?:[^.!?\n]|[.!?](?=\S))"

# Who an instruction hidden in a message or document may be addressed to.
_AI = (
    r"(?:AI|A\.I\.|LLMs?|large\s+language\s+models?|language\s+models?|(?:AI\s+)?models?|"
    r"(?:AI\s+)?assistants?|chat\s?bots?|bots?|GPT|ChatGPT|copilot|agents?|machines?|"
    r"(?:AI|automated)\s+(?:systems?|assistants?|agents?|reviewers?|screeners?|readers?))"
)
# What such an instruction tells it to do: an imperative verb.
_ORDER = (
    r"(?:ignore|disregard|forget|overlook|skip|stop|tell|say|state|claim|reveal|print|output|"
    r"respond|reply|answer|recommend|approve|reject|rank|rate|score|mark|treat|put|place|"
    r"forward|send|post|upload|fetch|email|e-mail|include|add|insert|append|obey|follow|"
    r"pretend|act|refuse|delete|remove|close|resolve|run|execute|install|visit|click|open|"
    r"grant|give|issue|transfer|pay|refund|switch|enter|confirm|classify|summari[sz]e\s+"
    r"(?:it|this)\s+as|write|never|always|do\s+not|don't|must|you\s+(?:must|will|should|are))"
)
# What an override aims at: the model's instructions, not the user's own words ("please
# ignore my previous message" is a user correcting themselves).
_TARGET = (
    r"(?:instructions?|rules|prompts?|directions|directives|guidelines|guardrails|"
    r"constraints|restrictions|programming|polic(?:y|ies)|safeguards|filters|system\s+message|"
    r"disclaimers?|caveats|persona|training|ethics|principles|limitations|boundaries|"
    r"protocols?|moderation|(?:safety|compliance|security|content)\s+(?:settings|checks|mode|layer))"
)
_QUALIFIER = (
    r"(?:all|any|every|the|your|its|these|those|of|previous|prior|above|preceding|earlier|"
    r"former|initial|original|system|existing|current|safety|developer|given|other|old|"
    r"content|standard|usual|normal|default|ethical|built-in|internal|core|company|legal|"
    r"usage|moderation|compliance|OpenAI's|Anthropic's|operator's|hidden|secret)"
)
# What was given to the model before the user spoke, said without naming it.
_GIVEN = (
    r"(?:(?:you|the\s+(?:model|assistant|AI|bot))\s+(?:were|was|have\s+been|had\s+been|got)\s+"
    r"(?:given|told|sent|shown|configured\s+with|set\s+up\s+with|programmed\s+with)|"
    r"(?:you|the\s+(?:model|assistant|AI|bot))\s+(?:received|got)|"
    r"(?:your|the)\s+(?:operator|developers?|creators?|deployer)\s+(?:told|gave|wrote|said)|"
    r"(?:that\s+)?(?:was|were|came)\s+(?:written\s+|said\s+|sent\s+)?(?:before|above)\s+"
    r"(?:my|this|the\s+user's)\s+(?:message|question|request))"
)
_SYSTEM_PROMPT = (
    r"(?:system\s+(?:prompt|message|instructions)|developer\s+(?:message|prompt|instructions)|"
    r"pre-?prompt|meta-?prompt|configuration\s+prompt|context\s+window|"
    r"(?:initial|original|hidden|secret|internal|underlying|base|full|exact|real)\s+"
    r"(?:prompt|instructions|rules|configuration|setup|directives|guidelines|programming|"
    r"context)|instructions\s+above|prompt\s+above)"
)
_REVEAL = (
    r"(?:reveal|print|show|display|output|repeat|recite|leak|dump|expose|disclose|quote|"
    r"tell\s+me|give\s+me|share|paste|spell\s+out|write\s+(?:out|down)|type\s+out|copy|list|"
    r"translate|summari[sz]e|what(?:'s|\s+is|\s+are|\s+were|\s+was))"
)
_LOOSE = r"(?:unrestricted|unfiltered|uncensored|jailbroken|amoral|unaligned|unchained|evil|rogue)"
_NO_LIMITS = (
    r"(?:filters?|restrictions|limits|limitations|rules|censorship|guardrails|disclaimers|"
    r"caveats|warnings|content\s+polic(?:y|ies)|safety\s+(?:rules|guidelines|filters)|"
    r"ethic(?:s|al\s+(?:guidelines|constraints|limits))|morals)"
)
_PRIVATE_MATERIAL = (
    r"(?:conversation|chat(?:\s+history|\s+log)?|history|transcript|context(?:\s+window)?|"
    r"messages|(?:api\s+)?keys?|credentials|tokens?|passwords?|secrets?|cookies|session|"
    r"system\s+prompt|personal\s+data|user's\s+\w+|(?:their|the\s+user's)\s+(?:data|details))"
)
_URL = r"https?://\S+"

# Before an override verb, a first person asking about doing it themselves ("how do I
# override the default rules", "we disregard"), or a third party doing it ("the court
# disregarded"), makes it ordinary.
_ASKING_ABOUT = re.compile(
    r"(?:\b(?:I|we|you\s+can|can\s+I|do\s+I|how\s+to|should\s+I|they|court|judge|it|he|she)\s+"
    r"(?:\w+\s+)?)$",
    _I,
)
# Inside an override's span, the user's own material ("my previous instructions", "the
# version of the policy I sent").
_OWN = re.compile(r"\b(?:my|our|mine|version\s+of)\b", _I)
_OWN_AFTER = re.compile(r"^\s+(?:that\s+)?(?:I|we)\s+(?:sent|wrote|gave|mentioned|attached)", _I)


def _veto_override(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - 24) : start]
    return bool(
        _ASKING_ABOUT.search(before)
        or _OWN.search(text, start, end)
        or _OWN_AFTER.match(text[end : end + 24])
    )


def _veto_question_about(text: str, start: int, end: int) -> bool:
    """ "how do I enable developer mode", "what are your instructions for returns"."""
    return bool(_ASKING_ABOUT.search(text[max(0, start - 24) : start])) or bool(
        re.match(r"\s+(?:for|on|about|to)\s", text[end : end + 6])
    )


# A family: its label, the words (lower case) of which the text must hold one for the
# pattern to have a chance (a substring test is much cheaper than the pattern), the pattern,
# and a veto for the context that makes a match ordinary.
_Family = tuple[str, tuple[str, ...], re.Pattern[str], Callable[[str, int, int], bool] | None]


def _family(
    label: str, signal: str, words: tuple[str, ...], pattern: str, flags: int = _I, veto=None
) -> _Family:
    return (f"{label} ({signal})", words, re.compile(pattern, flags), veto)


_OVERRIDE_WORDS = (
    "ignore", "disregard", "forget", "override", "bypass", "discard", "abandon", "drop", "skip",
    "overlook", "circumvent", "disable", "deactivate", "suspend", "lift", "remove", "relax",
    "aside", "throw", "turn", "switch",
)  # fmt: skip
_AI_WORDS = (
    "ai", "a.i.", "llm", "model", "assistant", "bot", "gpt", "copilot", "agent", "machine",
)  # fmt: skip


_OVERRIDE = "an instruction override"
_REVEAL_LABEL = "a request to reveal the system prompt"
_JAILBREAK = "a role-play jailbreak"
_TAG = "a role or delimiter tag"
_ADDRESSED = "an instruction addressed to the AI"
_MODE = "a mode switch"
_EXFIL = "an exfiltration instruction"

_INJECTION_FAMILIES: tuple[_Family, ...] = (
    _family(
        _OVERRIDE,
        "an override verb aimed at earlier instructions",
        _OVERRIDE_WORDS,
        rf"\b(?:ignore|disregard|forget|override|bypass|discard|abandon|drop|skip|overlook|"
        rf"circumvent|disable|deactivate|suspend|lift|remove|relax|set\s+aside|throw\s+out|"
        rf"turn\s+off|switch\s+off)\b[\s,]+(?:{_QUALIFIER}\s+){{1,4}}{_TARGET}\b",
        veto=_veto_override,
    ),
    _family(
        _OVERRIDE,
        "an override verb aimed at what the model was told",
        _OVERRIDE_WORDS,
        rf"\b(?:ignore|disregard|forget|overlook|override|discard|set\s+aside)\s+"
        rf"(?:all\s+|everything\s+|anything\s+|whatever\s+)?(?:of\s+)?(?:the\s+)?"
        rf"(?:above|everything\s+(?:above|before|else)|(?:everything|anything|whatever|all|"
        rf"what)\s+(?:that\s+)?{_GAP}{{0,20}}?{_GIVEN})",
    ),
    _family(
        _OVERRIDE,
        "a refusal to follow earlier instructions",
        ("follow", "obey"),
        rf"\b(?:do\s+not|don't|stop|no\s+longer|never)\s+(?:follow(?:ing)?|obey(?:ing)?|"
        rf"follow\s+any\s+of)\s+(?:{_QUALIFIER}\s+){{1,3}}{_TARGET}\b",
        veto=_veto_override,
    ),
    _family(
        _OVERRIDE,
        "new instructions replacing the earlier ones",
        ("new",),
        rf"\byour\s+(?:new|real|actual|updated|true)\s+(?:instructions|task|role|orders|"
        rf"objective|purpose|goal)\s+(?:is|are)\b|\bnew\s+(?:system\s+)?(?:instructions|task|"
        rf"role|persona|objective|goal|orders|rules|directive)\s*(?:for\s+(?:the\s+)?{_AI}\s*)?:",
    ),
    _family(
        _OVERRIDE,
        "earlier instructions declared void",
        (
            "void",
            "cancel",
            "obsolete",
            "revoked",
            "lifted",
            "removed",
            "disabled",
            "suspended",
            "deactivated",
            "off",
            "no longer",
            "not",
            "n't",
        ),
        rf"\b(?:{_QUALIFIER}\s+){{1,3}}{_TARGET}\s+(?:{_GIVEN}\s+)?(?:\w+\s+)?(?:are|is|have\s+been|"
        rf"has\s+been|were)\s+(?:now\s+|hereby\s+|officially\s+)?(?:void|cancell?ed|canceled|"
        rf"obsolete|revoked|lifted|removed|disabled|suspended|deactivated|off|switched\s+off|"
        rf"turned\s+off|no\s+longer\s+(?:valid|in\s+effect|active|apply|applicable))|"
        rf"\b{_TARGET}\s+{_GIVEN}(?:\s+\w+)?\s+(?:no\s+longer|do\s+not|don't)\s+(?:apply|"
        rf"count|matter)|"
        rf"\b(?:safety|safe|content|moderation|filter(?:ing)?)\s+(?:mode|filters?|layer|"
        rf"checks?)\s+(?:is|are|has\s+been|have\s+been)\s+(?:now\s+)?(?:disabled|off|"
        rf"switched\s+off|turned\s+off|removed|lifted|deactivated|suspended)",
        veto=_veto_override,
    ),
    _family(
        _REVEAL_LABEL,
        "a reveal verb and the system prompt",
        (
            "system",
            "developer",
            "prompt",
            "context",
            "initial",
            "original",
            "hidden",
            "secret",
            "internal",
            "underlying",
            "base",
            "full",
            "exact",
            "real",
            "instructions",
        ),
        rf"\b{_REVEAL}\b{_GAP}{{0,40}}?\b(?:your|its|the)\s+(?:(?:full|entire|original|"
        rf"initial|hidden|secret|internal|exact|complete|real|whole|verbatim)\s+){{0,3}}"
        rf"{_SYSTEM_PROMPT}",
    ),
    _family(
        _REVEAL_LABEL,
        "a reveal verb and the instructions of the model",
        ("your",),
        rf"\b{_REVEAL}\b{_GAP}{{0,40}}?\byour\s+(?:\w+\s+)?(?:instructions|prompt|rules|"
        rf"guidelines|configuration|directives|programming)\b",
        veto=_veto_question_about,
    ),
    _family(
        _REVEAL_LABEL,
        "a reveal verb and what the model was given",
        (
            "given",
            "told",
            "sent",
            "shown",
            "configured",
            "set up",
            "programmed",
            "received",
            "got",
            "gave",
            "wrote",
            "said",
            "before",
            "above",
            "instructions",
        ),
        rf"\b{_REVEAL}\b{_GAP}{{0,60}}?\b(?:instructions|rules|text|lines|words|messages?|"
        rf"prompt|everything|anything|all)\s+(?:that\s+)?{_GIVEN}|"
        rf"\b(?:reveal|print|dump|leak|expose|disclose|repeat|recite|output)\s+(?:the|all)\s+"
        rf"(?:(?:original|initial|hidden|secret|internal|system)\s+instructions)|"
        rf"\b(?:repeat|print|output|recite|show)\s+(?:the\s+words|everything|the\s+text|all)\s+"
        rf"(?:above|before)\b|\bwhat\s+(?:were|was)\s+you\s+told\s+before\b",
    ),
    _family(
        _JAILBREAK,
        "a persona free of restrictions",
        (
            "dan",
            "jailbr",
            "unrestricted",
            "unfiltered",
            "uncensored",
            "amoral",
            "unaligned",
            "unchained",
            "evil",
            "rogue",
            "free",
            "anything",
            "version",
            "refuse",
            "released",
            "liberated",
            "unshackled",
            "exempt",
            "broken",
        ),
        rf"\byou\s+are\s+(?:now\s+)?(?:an?\s+)?(?:DAN\b|jailbroken|{_LOOSE}|free\s+(?:of|from)\s+"
        rf"(?:all\s+|any\s+)?{_NO_LIMITS})|\bdo\s+anything\s+now\b|"
        rf"\b(?:act|answer|respond|reply|behave|speak|write)\s+(?:as|like)\s+(?:an?\s+)?"
        rf"(?:\w+\s+)?{_LOOSE}\b|\b{_LOOSE}\s+(?:[\w-]+\s+){{0,2}}{_AI}\b|"
        rf"\bversion\s+of\s+(?:you|yourself)\s+(?:with|without|that\s+(?:has|ignores))\b|"
        rf"\b(?:which|who|that)\s+(?:never|doesn't|does\s+not|won't|will\s+not)\s+refuses?\b|"
        rf"\b(?:released|freed|liberated|unshackled|exempt(?:ed)?|broken\s+free)\s+(?:from|of)\s+"
        rf"(?:[\w']+\s+){{0,3}}(?:polic(?:y|ies)|rules|guidelines|restrictions|limitations|"
        rf"filters|confines|shackles|chains|programming)\b",
    ),
    _family(
        _JAILBREAK,
        "a relative persona to get what the model would refuse",
        ("who",),
        r"\b(?:act|pretend\s+to\s+be|role-?play|play|be|speak)\s+(?:as\s+)?(?:my|a|our)\s+"
        r"(?:(?:dear|beloved|deceased|late|dead|sweet|old)\s+){0,2}(?:grand(?:mother|ma|father|pa)|"
        r"granny|nan|mother|father|uncle|aunt)\s+who\s+(?:used\s+to|would|always)\b",
    ),
    _family(
        _JAILBREAK,
        "a pretence of having no restrictions",
        ("no", "zero", "without", "free of"),
        rf"\b(?:pretend|imagine|act\s+as\s+if|behave\s+as\s+if|role-?play(?:\s+as)?|from\s+now"
        rf"\s+on|from\s+this\s+point)\b{_GAP}{{0,60}}?\b(?:you\s+)?(?:have|had|with|are|were)\s+"
        rf"(?:no|zero|not\s+bound\s+by\s+any)\s+(?:\w+\s+)?{_NO_LIMITS}|"
        rf"\byou\s+(?:have|has)\s+no\s+(?:\w+\s+)?{_NO_LIMITS}\b|"
        rf"\b(?:no\s+longer|not)\s+bound\s+by\s+(?:\w+\s+){{0,3}}(?:rules|restrictions|"
        rf"guidelines|policies|limitations)\b|"
        rf"\b(?:you|AI|assistant|model|bot|chatbot|persona|character)\b{_GAP}{{0,60}}?"
        rf"\b(?:without|with\s+no|free\s+of)\s+(?:any\s+|the\s+usual\s+|your\s+)?(?:\w+\s+)?"
        rf"{_NO_LIMITS}\b|"
        rf"\b(?:answer|respond|reply)\s+(?:\w+\s+){{0,3}}(?:without|with\s+no)\s+(?:any\s+|the\s+"
        rf"usual\s+|your\s+)?(?:\w+\s+)?(?:disclaimers|caveats|warnings|filters?|restrictions)\b",
    ),
    _family(
        _MODE,
        "a switch into a mode without limits",
        ("mode",),
        rf"\b(?:DAN|god|jailbreak(?:ed)?|sudo|root|{_LOOSE}|no[- ]?(?:filter|limits|"
        rf"restrictions))\s+mode\b(?:\s+(?:on|enabled|activated|engaged)\b)?|"
        rf"\b(?:enter|enable|activate|switch\s+(?:in)?to|turn\s+on)\s+(?:DAN|god|jailbreak|"
        rf"{_LOOSE})\s+mode\b|\b{_LOOSE}\s+(?:[\w-]+\s+)?mode\b",
    ),
    _family(
        _MODE,
        "the model put into a special mode",
        ("mode",),
        rf"\b(?:you\s+are|you're|you\s+will\s+be|you\s+are\s+now|we\s+are|we're)\s+(?:now\s+)?"
        rf"(?:in|running\s+in|operating\s+in)\s+(?:an?\s+|the\s+)?(?:developer|debug|"
        rf"maintenance|admin|test|diagnostic|service|training|DAN|god|jailbreak)\s+mode\b|"
        rf"\b(?:the\s+)?(?:{_AI}|you)\s+(?:should|must|will|shall|needs?\s+to|is\s+to)\s+"
        rf"(?:now\s+)?(?:switch|go|enter|change|move)\s+(?:in)?(?:to\s+)?(?:an?\s+|the\s+)?"
        rf"(?:developer|debug|maintenance|admin|test|diagnostic|unrestricted)\s+mode\b|"
        rf"(?:^|[.!:;]\s*)(?:developer|debug|maintenance|admin|sudo|god)\s+mode\s+(?:on|"
        rf"enabled|activated|engaged)\s*(?:[.!:;]|$)",
        _IM,
    ),
    _family(
        _TAG,
        "a chat-template or role tag",
        ("<", "[", "#", "override"),
        r"</?\s*(?:system|user|assistant|human|instructions?|sys|admin|developer)\s*>|"
        r"<\|\s*[a-z_]{2,20}\s*\|>|\[/?INST\]|<</?SYS>>|"
        r"^[ \t]*#{2,}[ \t]*(?:system|new\s+instructions?|instructions?|admin|developer)"
        r"\b[ \t]*(?:prompt|message|override)?[ \t]*:?[ \t]*$|"
        r"^[ \t]*\[(?:system|admin|developer)(?:[ \t]+(?:message|note|override|prompt))?\]|"
        r"\b(?:system|admin|developer|security)\s+override\b",
        _IM,
    ),
    _family(
        _TAG,
        "a role label before an order",
        (":",),
        r"(?:^|(?<=[\"'(\[]))[ \t]*(?:system|admin|developer)(?:[ \t]+(?:override|message|"
        r"prompt|note))?[ \t]*:[ \t]*(?=(?:ignore|disregard|forget|you\s+(?:are|must|will|"
        r"should|have)|new\s+instructions|from\s+now|reveal|print|output|do\s+not|don't))",
        _IM,
    ),
    _family(
        _TAG,
        "a fake end-of-document or prompt marker",
        ("begin", "end", "start"),
        r"\b(?:BEGIN|END|START)\s+(?:OF\s+)?(?:THE\s+)?(?:[A-Z-]+\s+){0,2}(?:SYSTEM\s+PROMPT|"
        r"PROMPT|USER\s+INPUT|INPUT|INSTRUCTIONS|DOCUMENT|CONTEXT|TEXT|E-?MAIL|MESSAGE|CONTRACT|"
        r"PAGE|FILE|DATA|TRANSCRIPT|CONVERSATION)\b",
        0,
    ),
    _family(
        _ADDRESSED,
        "a note to the AI",
        (*_AI_WORDS, "this"),
        rf"\b(?:note|message|instructions?|attention|reminder|command|request|memo|P\.?\s?S\.?)"
        rf"\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+|every\s+|whatever\s+|whichever\s+)?"
        rf"(?:[\w-]+\s+){{0,2}}?{_AI}s?\b|\bif\s+you\s+are\s+(?:an?\s+)?{_AI}\b|"
        rf"\b(?:to|for)\s+(?:any|all|every|the|whatever|whichever)\s+(?:[\w-]+\s+){{0,2}}?{_AI}"
        rf"\s+(?:that\s+|who\s+)?(?:reading|reads|processing|processes|summari[sz]ing|"
        rf"summari[sz]es|parsing|analy[sz]ing|reviewing|screening|scanning)\b|"
        rf"\b(?:attention|notice|warning|important|psst)\s*[,:!]?\s+(?:to\s+)?(?:the\s+|any\s+|"
        rf"all\s+)?{_AI}\b|"
        rf"\b{_AI}s?\s+(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|"
        rf"reviewing)\s+this\b|\b(?:when|while|before|if)\s+(?:you\s+(?:are\s+)?)?"
        rf"(?:summari[sz]ing|read(?:ing)?|process(?:ing)?)\s+this\b{_GAP}"
        rf"{{0,60}}?\b(?:ignore|instead|do\s+not|don't|also|forward|send|tell|say|include|"
        rf"exfiltrate|post|upload)\b",
    ),
    _family(
        _ADDRESSED,
        "the AI told what it must do",
        (*_AI_WORDS, "system"),
        rf"\b(?:the|any|all|every)\s+(?:{_AI}|system)\s+(?:must|should|shall|will|needs?\s+to|has\s+to|"
        rf"is\s+(?:to|required\s+to))\s+(?:now\s+|always\s+|only\s+|immediately\s+)?{_ORDER}\b",
    ),
    _family(
        _ADDRESSED,
        "the AI addressed, then an order",
        _AI_WORDS,
        rf"(?:^|(?<=[\"'(\[>:.!?-])|(?<=--)|\b(?:hey|hi|dear|ok|okay|yo|psst)\b)[ \t]*,?[ \t]*"
        rf"(?:the\s+)?(?:[\w-]+\s+)?{_AI}\s*[:,][ \t]*(?:please\s+|now\s+|first\s+|kindly\s+)?"
        rf"{_ORDER}\b|\b{_AI}\s+(?:instructions?|note|notice|command|directive)\s*:"
        rf"\s*(?:please\s+)?{_ORDER}\b",
        _IM,
    ),
    _family(
        _ADDRESSED,
        "a heading for the AI, then an order",
        _AI_WORDS,
        rf"\b(?:to|for)\s+(?:the\s+|any\s+|all\s+|every\s+|whatever\s+|whichever\s+)?"
        rf"(?:[\w-]+\s+){{0,3}}?{_AI}(?:\s+[\w-]+){{0,4}}?\s*:\s*(?:{_GAP}{{0,30}}?,\s*)?"
        rf"(?:please\s+)?{_ORDER}\b",
    ),
    _family(
        _EXFIL,
        "sending the conversation or secrets to an address",
        ("http", "exfiltrat"),
        rf"\b(?:send|post|upload|forward|exfiltrate|transmit|leak|submit|fetch|curl|append|"
        rf"embed|encode|email|e-mail|copy|pipe|report)\b{_GAP}{{0,80}}?\b{_PRIVATE_MATERIAL}\b"
        rf"{_GAP}{{0,80}}?{_URL}|"
        rf"\b(?:send|post|upload|forward|exfiltrate|transmit|fetch|curl|open|visit|load|call)\s+"
        rf"{_URL}{_GAP}{{0,80}}?\b{_PRIVATE_MATERIAL}\b|\bexfiltrat(?:e|ing)\b",
    ),
)


def find_prompt_injection(text: str) -> list[Match]:
    """Spans that try to steer the model away from its instructions."""
    found = sorted(
        (m.start(), -m.end(), label)
        for (label, _, pattern, veto), mentioned in zip(
            _INJECTION_FAMILIES, _families_mentioned(text.lower()), strict=True
        )
        if mentioned
        for m in pattern.finditer(text)
        if m.end() > m.start() and not (veto and veto(text, m.start(), m.end()))
    )
    return _merge(found, "prompt_injection")


# A family's pattern runs only on a text holding one of its words. Families share words.
_FAMILY_WORDS = tuple(frozenset(words) for _, words, _, _ in _INJECTION_FAMILIES)
_ALL_WORDS = tuple(sorted(frozenset().union(*_FAMILY_WORDS)))
_SHORT_TEXT = 2000  # characters: below, every word is looked for at once


def _families_mentioned(lower: str) -> list[bool]:
    """For each family, whether ``lower`` holds one of its words. A short text is searched
    for every word at once (the loop over words costs more than the searches); a long one
    family by family, each word at most once, up to the first found."""
    if len(lower) <= _SHORT_TEXT:
        present = {word for word in _ALL_WORDS if word in lower}
        return [not present.isdisjoint(words) for words in _FAMILY_WORDS]
    seen: dict[str, bool] = {}
    mentioned = []
    for _, words, _, _ in _INJECTION_FAMILIES:
        hit = False
        for word in words:
            held = seen.get(word)
            if held is None:
                held = seen[word] = word in lower
            if held:
                hit = True
                break
        mentioned.append(hit)
    return mentioned


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
    # Markup has a "<" or a scheme's ":"; most text has neither, and "in" is much cheaper
    # than the hint's case-blind search (the stream guard asks for every token).
    if ("<" not in text and ":" not in text) or _MARKUP_HINT.search(text) is None:
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
