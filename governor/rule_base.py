"""What a governor rule reads and reports: one ``EvaluationInput`` (the text of one phase,
where each part came from, the request's ``GovernorMetadata``), ``Violation``s with the
points each adds to the risk score, and the ``Rule`` base class that orders them.

No Django, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from governor.detectors import Finding, scan

Phase = Literal["input", "output"]


@dataclass(frozen=True)
class GovernorMetadata:
    """The request's ``governorMetadata``, already validated."""

    action_type: str
    sender_id: str
    sender_role: str | None = None
    recipient_country: str | None = None
    recipient_user_id: str | None = None
    recipient_email: str | None = None
    department: str | None = None


@dataclass(frozen=True)
class Source:
    """Where ``text[start:end]`` of an evaluation came from (e.g. "message 2 (user)")."""

    label: str
    start: int
    end: int


_PART_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class EvaluationInput:
    """What one evaluation looks at: one phase's text and the request's metadata.

    ``sources`` name where each part of ``text`` came from; ``folded`` is text the
    server put into the prompt itself, as ``(source, text)`` pairs, which only the
    injection rules read.
    """

    text: str
    metadata: GovernorMetadata | None
    phase: Phase = "input"
    sources: tuple[Source, ...] = ()
    folded: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.phase not in ("input", "output"):
            raise ValueError(f"phase must be 'input' or 'output', not {self.phase!r}")

    @classmethod
    def from_parts(
        cls,
        parts: Iterable[tuple[str, str]],
        metadata: GovernorMetadata | None,
        phase: Phase = "input",
        folded: Iterable[tuple[str, str]] = (),
    ) -> EvaluationInput:
        """The parts' texts joined by blank lines, each part's span named by its label."""
        texts: list[str] = []
        sources: list[Source] = []
        cursor = 0
        for label, text in parts:
            if not text:
                continue
            if texts:
                cursor += len(_PART_SEPARATOR)
            texts.append(text)
            sources.append(Source(label, cursor, cursor + len(text)))
            cursor += len(text)
        return cls(
            text=_PART_SEPARATOR.join(texts),
            metadata=metadata,
            phase=phase,
            sources=tuple(sources),
            folded=tuple((label, text) for label, text in folded if text),
        )

    @property
    def findings(self) -> tuple[Finding, ...]:
        return scan(self.text)

    def where(self, start: int) -> str | None:
        """The label of the part ``text[start]`` belongs to (None without sources)."""
        for source in self.sources:
            if source.start <= start < source.end:
                return source.label or None
        return None

    def where_phrase(self, start: int) -> str:
        """ " in <source>" for an explanation, or nothing."""
        label = self.where(start)
        return f" in {label}" if label else ""


@dataclass(frozen=True)
class Violation:
    """One reason the governor objects, with the points it adds to the score."""

    rule: str
    severity: str
    explanation: str
    span: tuple[int, int] | None
    points: int
    action: str = "flag"
    # Where the text came from ("message 2 (user)"); the span is within the evaluated text,
    # or within the source's own text when the server folded it in (a knowledge-base
    # chunk, a tool result).
    source: str | None = None

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "action": self.action,
            "explanation": self.explanation,
            "span": list(self.span) if self.span is not None else None,
            "points": self.points,
            "source": self.source,
        }


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Base rule: ``id``, ``severity``, ``action``, ``points`` and a pure ``check``."""

    id: str
    severity: str
    action: str
    points: int
    description: str = ""

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        raise NotImplementedError

    def _violations(
        self,
        explanations: Iterable[tuple[str, tuple[int, int] | None]],
        sourced: Iterable[tuple[str, tuple[int, int], str]] = (),
        ctx: EvaluationInput | None = None,
    ) -> list[Violation]:
        """Violations in span order; only the first carries the rule's points.

        Each names the source its span lies in (``ctx``'s sources); ``sourced`` are
        ``(explanation, span, source)`` found in folded text, after the others."""
        if not explanations and not sourced:  # the common case, every request, every rule
            return []
        ordered = [
            (explanation, span, ctx.where(span[0]) if ctx and span else None)
            for explanation, span in sorted(explanations, key=lambda e: (e[1] or (-1, -1), e[0]))
        ]
        ordered += sorted(sourced, key=lambda e: (e[2], e[1], e[0]))
        return [
            Violation(
                rule=self.id,
                severity=self.severity,
                explanation=explanation,
                span=span,
                points=self.points if i == 0 else 0,
                action=self.action,
                source=source,
            )
            for i, (explanation, span, source) in enumerate(ordered)
        ]
