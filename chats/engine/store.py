"""The engine's writes from the event loop (:mod:`chatproject.async_db`): admission's
audit record, credit hold and user message, and finalisation's answer, output findings
and settlement, each phase one statement (data-modifying CTEs: one round trip, one
transaction, and one parse and bind in the driver).

The same writes as :func:`admission._admit` and :func:`finalisation.finish_in_db`, which
remain the path on SQLite, for what these do not cover (a chat still to open, a policy not
cached yet) and for a transaction the database refuses for its data: that one is rolled
back whole here and written again there.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING

from django.utils import timezone

from billing import credits
from billing.ledger import as_credits
from chatproject import async_db, instances
from chatproject.errors import is_outage
from chats.engine.types import GenerationRequest, StoredMessage, Usage
from chats.models import Chat, Message
from chats.providers import StreamEnd
from governor import gate
from governor.models import AuditRecord

if TYPE_CHECKING:
    from chats.engine.generation import Generation

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
_CHAT = Chat._meta.db_table
_MESSAGE = Message._meta.db_table
_AUDIT = AuditRecord._meta.db_table
# The answer's chat, locked against a concurrent delete: the answer is stored only if the
# chat still is, and the settlement commits either way.
_CHAT_ROW = f'chat_row AS (SELECT id FROM "{_CHAT}" WHERE id = %(chat_id)s FOR NO KEY UPDATE)'  # noqa: S608
_ANSWER_UPDATE = f"""answer_row AS (
    UPDATE "{_MESSAGE}" SET content = %(content)s, status = %(status)s,
        prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s,
        finish_reason = %(finish_reason)s, tool_calls = %(tool_calls)s
    WHERE id = %(message_id)s AND EXISTS (SELECT 1 FROM chat_row)
    RETURNING id
)"""  # noqa: S608 (only the models' own table names are formatted in)
_FINDINGS = f"""findings_row AS (
    UPDATE "{_AUDIT}" SET output_findings = %(findings)s, completed_at = %(completed_at)s
    WHERE id = %(audit_id)s
)"""  # noqa: S608 (only the models' own table names are formatted in)


class Refused(Exception):
    """The database refused the transaction for its data (not an outage): it was rolled
    back whole, and the caller writes it again through the ORM."""


def admits(request: GenerationRequest, check: gate.InputCheck | None) -> bool:
    """Whether :func:`admit` covers this request: its chat (if any) open already and its
    tenant's policy cached."""
    opens_chat = request.chat is None and request.chat_opener is not None
    return check is not None and not opens_chat and async_db.available()


async def admit(
    request: GenerationRequest,
    check: gate.InputCheck,
    *,
    model_name: str,
    reservation: Decimal,
    needs_hold: bool,
    store_message: bool,
    message_id: uuid.UUID,
    user_message: bool,
) -> tuple[gate.GateDecision, credits.Hold | None, StoredMessage | None]:
    """Admission's writes, one statement; raises ApiError for a refusal (the governor's,
    its record written alone; the hold's, with nothing else written), :class:`Refused`,
    or the outage."""
    audit, params = async_db.insert(check.evaluated.record, "audit_row")
    if not check.approved:
        await _run(f"WITH {audit} SELECT 1", params, "admitting", request.request_id)
        check.decide()  # raises GOVERNOR_REJECTED
    decision = check.decide()
    tenant_id = request.tenant.pk
    amount = reservation.quantize(credits.QUANTUM)
    holding = needs_hold and amount > 0
    ctes = [audit]
    if holding:
        answer_id = message_id if request.chat and store_message else None
        params |= credits.reserve_statement(
            tenant_id=tenant_id,
            amount=amount,
            reference=request.request_id,
            model=model_name,
            message_id=answer_id,  # the answer it pays for, stored in this chat
        )[1]
        ctes.append(credits.RESERVE_CTES)
    params["tenant_id"] = tenant_id
    stored = None
    if request.chat is not None and store_message and user_message:
        message = instances.build(
            Message,
            chat=request.chat,
            role=Message.Role.USER,
            content=decision.clean(request.messages[-1].get("content", "")),
            client_message_id=request.client_message_id,
            created_at=timezone.now(),
        )
        # With a hold, the message is written only if the hold is.
        cte, message_params = async_db.insert(
            message, "message_row", source="hold" if holding else ""
        )
        ctes.append(cte)
        params |= message_params
        stored = StoredMessage(message.id, message.content, message.created_at)
    held = "(SELECT credit_balance FROM change), (SELECT id FROM hold)" if holding else "NULL, NULL"
    sql = f"WITH {', '.join(ctes)} SELECT {held}, {credits.BALANCE_BEFORE}"
    balance_after, hold_id, balance = await _run(sql, params, "admitting", request.request_id)
    if not needs_hold:
        return decision, None, stored
    if not holding:  # a zero hold writes nothing; it reports the balance
        return (
            decision,
            credits.Hold(tenant_id, ZERO, request.request_id, as_credits(balance)),
            stored,
        )
    if hold_id is None:  # the balance cannot cover it: nothing but the audit record written
        raise credits.insufficient_credits(amount, balance)
    hold = credits.Hold(tenant_id, amount, request.request_id, as_credits(balance_after), hold_id)
    return decision, hold, stored


async def finalise(
    generation: Generation,
    status: str,
    content: str,
    usage: Usage,
    end: StreamEnd | None,
    *,
    cost: Decimal,
) -> tuple[Decimal, Decimal]:
    """Finalisation's writes, one statement, the hold settled at ``cost``: (what the
    ledger took, the balance after); raises :class:`Refused` or the outage."""
    request = generation.request
    params: dict = {"tenant_id": request.tenant.pk}
    ctes = []
    answering = request.chat is not None and not generation.replayed
    if answering:
        ctes += [_CHAT_ROW, _answer(generation, status, content, usage, end, params)]
    findings = _output_findings(generation, content)
    if findings is not None:
        ctes.append(_FINDINGS)
        params["findings"] = async_db.prep(AuditRecord, "output_findings", findings)
        params |= {"completed_at": timezone.now(), "audit_id": generation.decision.audit_id}
    hold = generation.hold
    settling = hold is not None and hold.hold_id is not None
    charged = ZERO
    if settling:
        assert hold is not None
        charged = credits.capped_charge(hold, cost)
        params |= credits.settle_statement(
            hold,
            charged,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )[1]
        ctes.append(credits.SETTLE_CTES)
    columns = [
        "(SELECT credit_balance FROM change)" if settling else "NULL",
        credits.CHARGED_BEFORE if settling else "NULL",
        credits.BALANCE_BEFORE,
        "(SELECT count(*) FROM answer_row)" if answering else "NULL",
    ]
    sql = f"{'WITH ' + ', '.join(ctes) if ctes else ''} SELECT {', '.join(columns)}"
    balance_after, charged_before, balance, answers = await _run(
        sql, params, "finalising", generation.message_id
    )
    if answering and not answers:
        logger.info("chat of answer %s was deleted; answer not stored", generation.message_id)
    if not settling:  # nothing held: nothing charged
        return ZERO, as_credits(balance)
    if balance_after is None:  # the hold was closed before (by the sweeper): what it took
        return as_credits(charged_before or 0), as_credits(balance)
    return charged, as_credits(balance_after)


async def _run(sql: str, params: dict, doing: str, subject) -> tuple:
    try:
        return await async_db.fetch_one(sql, params)
    except async_db.Error as error:
        if is_outage(error):
            raise
        logger.warning(
            "%s %s from the event loop failed (%s); again by the ORM", doing, subject, error
        )
        raise Refused from error


def _answer(
    generation: Generation,
    status: str,
    content: str,
    usage: Usage,
    end: StreamEnd | None,
    params: dict,
) -> str:
    """The CTE ``answer_row`` writing the assistant message (its parameters put in
    ``params``), from ``chat_row``: not written if its chat was deleted meanwhile."""
    chat = generation.request.chat
    assert chat is not None  # only an answer in a chat is stored
    finish_reason = (end.finish_reason if end else "") or ""
    calls = generation._calls.all()
    params["chat_id"] = chat.pk
    if generation._answer_row:  # checkpointed while it streamed
        tool_calls = async_db.prep(Message, "tool_calls", calls)
        params |= {
            "content": content,
            "status": status,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "finish_reason": finish_reason,
            "tool_calls": tool_calls,
            "message_id": generation.message_id,
        }
        return _ANSWER_UPDATE
    message = instances.build(
        Message,
        id=generation.message_id,
        chat=chat,
        role=Message.Role.ASSISTANT,
        model=generation.model.name,
        content=content,
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        finish_reason=finish_reason,
        tool_calls=calls,
    )
    cte, message_params = async_db.insert(message, "answer_row", source="chat_row", returning="id")
    params |= message_params
    return cte


def _output_findings(generation: Generation, content: str):
    """The governor's findings on the answer (CPU only); None when there is no record to
    complete, or the check failed (logged: the answer is delivered)."""
    try:
        from chats.engine.finalisation import output_check  # which imports this module

        return gate.governor_assess_output(**output_check(generation, content))
    except Exception:
        logger.exception("governor output check failed")
        return None
