"""The engine's writes from the event loop (:mod:`chatproject.async_db`): admission's
audit record, credit hold and user message, and finalisation's answer, output findings
and settlement, each phase one transaction sent in one round trip.

The same writes as :func:`admission._admit` and :func:`finalisation.finish_in_db`, which
remain the path on SQLite, for what these do not cover (a chat still to open, a policy not
cached yet) and for a transaction the database refuses for its data: that one is rolled
back whole here and written again there.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, NoReturn

from django.utils import timezone

from billing import credits
from billing.ledger import as_credits
from chatproject import async_db
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
_LOCK_CHAT = f'SELECT 1 FROM "{_CHAT}" WHERE id = %s FOR NO KEY UPDATE'  # noqa: S608
_CHAT_EXISTS = f'EXISTS (SELECT 1 FROM "{_CHAT}" WHERE id = %s)'  # noqa: S608
_ANSWER_UPDATE = f"""
UPDATE "{_MESSAGE}" SET content = %s, status = %s, prompt_tokens = %s, completion_tokens = %s,
    finish_reason = %s, tool_calls = %s
WHERE id = %s AND {_CHAT_EXISTS}
"""  # noqa: S608 (only the models' own table names are formatted in)
_FINDINGS_UPDATE = f'UPDATE "{_AUDIT}" SET output_findings = %s, completed_at = %s WHERE id = %s'  # noqa: S608


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
    """Admission's writes; raises ApiError for a refusal (the governor's, once its record
    is written; the hold's, with nothing else written), :class:`Refused`, or the outage."""
    record = check.evaluated.record
    if not check.approved:  # the record of the refusal is written alone
        try:
            async with async_db.transaction() as conn:
                await conn.execute(*async_db.insert(record))
        except async_db.Error as error:
            _raise_refused(error, "admitting", request.request_id)
        check.decide()  # raises GOVERNOR_REJECTED
    decision = check.decide()
    amount = reservation.quantize(credits.QUANTUM)
    refusal = None
    try:
        async with async_db.transaction() as conn:
            await conn.execute(*async_db.insert(record))
            holding = balance = None
            if needs_hold and amount > 0:
                answer_id = message_id if request.chat and store_message else None
                holding = await conn.execute(
                    *credits.reserve_statement(
                        tenant_id=request.tenant.pk,
                        amount=amount,
                        reference=request.request_id,
                        model=model_name,
                        message_id=answer_id,  # the answer it pays for, stored in this chat
                    )
                )
            elif needs_hold:  # a zero hold writes nothing; it reports the balance
                balance = await conn.execute(credits.BALANCE_SQL, [request.tenant.pk])
            stored = None
            if request.chat is not None and store_message and user_message:
                message = Message(
                    chat=request.chat,
                    role=Message.Role.USER,
                    content=decision.clean(request.messages[-1].get("content", "")),
                    client_message_id=request.client_message_id,
                    created_at=timezone.now(),
                )
                await conn.execute(*async_db.insert(message))
                stored = StoredMessage(message.id, message.content, message.created_at)
            hold = None
            if holding is not None:
                row = await holding.fetchone()
                if row is None:  # the balance cannot cover it: take the message out again
                    if stored is not None:
                        sql = f'DELETE FROM "{_MESSAGE}" WHERE id = %s'  # noqa: S608
                        await conn.execute(sql, [stored.id])
                    current = await conn.execute(credits.BALANCE_SQL, [request.tenant.pk])
                    (left,) = await _one(current)
                    refusal = credits.insufficient_credits(amount, left)
                else:
                    hold = credits.Hold(
                        request.tenant.pk, amount, request.request_id, as_credits(row[0]), row[1]
                    )
            elif balance is not None:
                (current,) = await _one(balance)
                hold = credits.Hold(
                    request.tenant.pk, ZERO, request.request_id, as_credits(current)
                )
    except async_db.Error as error:
        _raise_refused(error, "admitting", request.request_id)
    if refusal is not None:
        raise refusal
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
    """Finalisation's writes, the hold settled at ``cost``: (what the ledger took, the
    balance after); raises :class:`Refused` or the outage."""
    request = generation.request
    findings = _output_findings(generation, content)
    hold = generation.hold
    charged = ZERO
    try:
        async with async_db.transaction() as conn:
            answered = None
            if request.chat is not None and not generation.replayed:
                # Locked against a concurrent delete: the answer is stored only if its chat
                # still is, and the settlement commits either way.
                await conn.execute(_LOCK_CHAT, [request.chat.pk])
                answered = await conn.execute(*_answer(generation, status, content, usage, end))
            if findings is not None:
                params = [*async_db.prep(AuditRecord, output_findings=findings), timezone.now()]
                await conn.execute(_FINDINGS_UPDATE, [*params, generation.decision.audit_id])
            if hold is not None and hold.hold_id is not None:
                charged = credits.capped_charge(hold, cost)
                settle = credits.settle_statement(
                    hold,
                    charged,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                )
                settling = await conn.execute(*settle)
            else:  # nothing held: nothing charged
                settling = await conn.execute(credits.BALANCE_SQL, [request.tenant.pk])
            row = await settling.fetchone()
            if answered is not None and answered.rowcount == 0:
                logger.info(
                    "chat of answer %s was deleted; answer not stored", generation.message_id
                )
            if row is None:  # the hold was closed before (by the sweeper): what it took
                assert hold is not None  # only a settlement finds no row
                closed = await conn.execute(credits.CLOSED_HOLD_SQL, [hold.hold_id])
                taken, balance = await _one(closed)
                return as_credits(taken or 0), as_credits(balance)
            return charged, as_credits(row[0])
    except async_db.Error as error:
        _raise_refused(error, "finalising", generation.message_id)


async def _one(cursor) -> tuple:
    row = await cursor.fetchone()
    assert row is not None  # a row the statement always returns
    return row


def _answer(generation: Generation, status: str, content: str, usage: Usage, end: StreamEnd | None):
    chat = generation.request.chat
    assert chat is not None  # only an answer in a chat is stored
    finish_reason = (end.finish_reason if end else "") or ""
    calls = generation._calls.all()
    if generation._answer_row:  # checkpointed while it streamed
        (tool_calls,) = async_db.prep(Message, tool_calls=calls)
        params = [content, status, usage.prompt_tokens, usage.completion_tokens, finish_reason]
        return _ANSWER_UPDATE, [*params, tool_calls, generation.message_id, chat.pk]
    message = Message(
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
    return async_db.insert(message, only_if=_CHAT_EXISTS, only_if_params=[chat.pk])


def _output_findings(generation: Generation, content: str):
    """The governor's findings on the answer (CPU only); None when there is no record to
    complete, or the check failed (logged: the answer is delivered)."""
    try:
        return gate.governor_assess_output(
            decision=generation.decision,
            text=content,
            guard=generation.guard,
            tool_calls=generation._calls.all(),
            model_name=generation.model.name if generation.fell_back else None,
        )
    except Exception:
        logger.exception("governor output check failed")
        return None


def _raise_refused(error: Exception, doing: str, subject) -> NoReturn:
    if is_outage(error):
        raise error
    logger.warning(
        "%s %s on the async pool failed (%s); again through the ORM", doing, subject, error
    )
    raise Refused from error
