"""Finalisation: how every generation ends, whatever the ending (complete, upstream
failure, cancel or disconnect).

In one database call: the assistant message written, the hold settled at the real usage,
the governor's output check. Then the stream log closed, the Idempotency-Key's answer
kept (or the key given up), and the response cache filled with a complete answer. If the
database is down, the writes are retried with backoff for ``FINALISE_RETRY_SECONDS``;
past that the open hold is the sweeper's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import DatabaseError, transaction

from billing import credits, idempotency, pricing, response_cache
from billing.models import Tenant
from chatproject import async_db, metrics
from chatproject.db import db_call, pipelined
from chatproject.errors import is_outage
from chats import checkpoints, stream_log
from chats.engine import store
from chats.engine.background import _in_background
from chats.engine.types import Outcome, Usage
from chats.models import Chat, Message
from chats.providers import StreamEnd
from governor import gate

if TYPE_CHECKING:
    from chats.engine.generation import Generation

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
# How long finalisation keeps trying through a database outage (backing off, at most 10 s
# apart) after the client was told; past it the open hold is left to the sweeper.
FINALISE_RETRY_SECONDS = 600.0


async def finish(
    generation: Generation, status: str, parts: list[str], end: StreamEnd | None
) -> tuple[Decimal, Decimal, Usage] | None:
    """Store, settle and audit the exchange; None if the database stayed down for
    ``FINALISE_RETRY_SECONDS`` (its hold is then the sweeper's to close)."""
    if generation._finished:  # events() finalises once, whichever way it ends
        raise RuntimeError("generation finalised twice")
    generation._finished = True
    await checkpoints.leave(generation)
    content = "".join(parts)
    usage = generation._usage(parts, end)
    calls = generation._calls
    answer = None
    if status == Message.Status.COMPLETE and not calls:  # tool calls are never cached
        answer = response_cache.CachedAnswer(
            content=content,
            tokens=parts,
            finish_reason=end.finish_reason if end else "stop",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
    close_log(generation, status, usage, end)
    if answer is None:  # nothing to cache: identical requests generate on their own
        release_claim(generation)
    try:
        charged, remaining = await write_final(generation, status, content, usage, end)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.error(
            "could not finalise %s: the database stayed unavailable; its credit hold is "
            "left to the sweeper",
            generation.message_id,
        )
        await close_idempotency_claim(generation, None)
        return None
    finally:  # the generation is over once it is stored and settled (or given up on)
        if generation.slot is not None:
            generation.slot.give_back()
    generation.outcome = Outcome(status, content, usage, charged, remaining)
    metrics.GENERATIONS.labels(status=status, cache=generation.cache_status).inc()
    metrics.TOKENS.inc(len(parts))
    metrics.CREDITS.inc(float(charged))
    await close_idempotency_claim(generation, answer, charged, remaining)
    # The answer's last event need not wait for the cache: the fill starts once it is
    # out, and the stream ends when the fill is done (see events() and finished()).
    generation._answer_to_cache = answer
    if generation.receipt is not None:  # the replay charged nothing; it reports the original
        return generation.receipt.credits_charged, generation.receipt.credits_remaining, usage
    return charged, remaining, usage


async def write_final(generation: Generation, *args) -> tuple[Decimal, Decimal]:
    """:func:`finish_in_db`, tried again with backoff while the database is down, for
    up to ``FINALISE_RETRY_SECONDS``."""
    delay, give_up = 0.5, time.monotonic() + FINALISE_RETRY_SECONDS
    while True:
        try:
            return await write_once(generation, *args)
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() + delay > give_up:
                raise
            logger.warning(
                "finalising %s: database unavailable (%s); again in %.1f s",
                generation.message_id,
                exc,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def write_once(
    generation: Generation, status: str, content: str, usage: Usage, end: StreamEnd | None
) -> tuple[Decimal, Decimal]:
    """The final writes: from the event loop when the async pool is on, else (or when the
    database refused them there) through the ORM (:func:`finish_in_db`)."""
    if async_db.available():
        cost = usage_cost(generation, usage)
        try:
            return await store.finalise(generation, status, content, usage, end, cost=cost)
        except store.Refused:
            pass
    return await db_call(finish_in_db, generation, status, content, usage, end)


async def fill_cache(generation: Generation, answer: response_cache.CachedAnswer | None) -> None:
    """Keep a complete answer (not a replayed one) for the next identical request;
    identical requests join this one's stream log until it is kept."""
    if answer is None or not generation.generates or not generation.cache_key:
        return
    if generation.fell_back:  # the key names the first deployment: a hit must be its answer
        release_claim(generation)
        return
    # The claim's release is queued right behind the answer's write, so both go out in one
    # write, in that order: a request arriving in between still joins the stream log.
    keeping = asyncio.ensure_future(response_cache.cache_put(generation.cache_key, answer))
    release_claim(generation)
    try:
        await keeping
    except Exception:  # a cache outage must not fail a delivered answer
        logger.exception("response cache write failed")


def close_log(generation: Generation, status: str, usage: Usage, end: StreamEnd | None) -> None:
    if generation.log is not None:
        finish_reason = (end.finish_reason if end else "") or "stop"
        _in_background(
            generation.log.close(
                stream_log.LogEnd(
                    status, finish_reason, usage.prompt_tokens, usage.completion_tokens
                )
            )
        )


def release_claim(generation: Generation) -> None:
    if generation.claimed and generation.cache_key:
        generation.claimed = False
        _in_background(stream_log.release(generation.cache_key, generation.message_id.hex))


async def close_idempotency_claim(
    generation: Generation,
    answer: response_cache.CachedAnswer | None,
    charged: Decimal = ZERO,
    remaining: Decimal = ZERO,
) -> None:
    """Keep the answer for retries with the same key once it is settled (its receipt
    holds ``charged`` and ``remaining``); give the key up for an answer that failed, was
    cancelled or could not be stored."""
    if generation.idempotency_claim is None:
        return
    tenant_id, key = generation.request.tenant.pk, generation.request.idempotency_key
    try:
        if answer is None:
            await idempotency.idempotency_abandon(tenant_id, key)
        else:
            receipt = idempotency.Receipt(
                generation.message_id, charged, remaining, generation.cache_status
            )
            await idempotency.idempotency_complete(
                tenant_id, key, generation.idempotency_claim, answer, receipt
            )
    except Exception:  # an outage must not fail a delivered answer
        logger.exception("idempotency record write failed")


def finish_in_db(
    generation: Generation, status: str, content: str, usage: Usage, end: StreamEnd | None
) -> tuple[Decimal, Decimal]:
    """One transaction, one commit, written in as few round trips as it can be.

    First with the writes sent together (see :func:`pipelined`): a database error then
    surfaces only once they are all out, and fails the whole transaction. It is rolled
    back and written again one write at a time, each isolated, so that the settlement
    commits whatever else fails (an answer the database refuses to store, say).
    """
    try:
        with transaction.atomic():
            return finalise(generation, status, content, usage, end, together=True)
    except DatabaseError as exc:
        if is_outage(exc):  # no use writing one by one: the caller tries again later
            raise
        logger.warning("finalising %s together failed; once more one by one", generation.message_id)
    with transaction.atomic():
        return finalise(generation, status, content, usage, end, together=False)


def finalise(
    generation: Generation,
    status: str,
    content: str,
    usage: Usage,
    end: StreamEnd | None,
    *,
    together: bool,
) -> tuple[Decimal, Decimal]:
    isolated = contextlib.nullcontext if together else transaction.atomic  # savepoints
    with pipelined() if together else contextlib.nullcontext():
        if generation.request.chat is not None and not generation.replayed:
            try:
                store_answer(generation, status, content, usage, end, isolated)
            except DatabaseError:
                if together:
                    raise
                logger.exception("could not store the answer %s", generation.message_id)
        try:  # also for empty answers: it completes the audit record
            with isolated():
                gate.governor_check_output(**output_check(generation, content))
        except DatabaseError:
            if together:
                raise
            logger.exception("governor output check failed")
        except Exception:  # the answer is delivered; a failed post-check is logged
            logger.exception("governor output check failed")
        settlement = settle(generation, usage) if generation.hold is not None else None
    if settlement is None:
        balances = Tenant.objects.values_list("credit_balance", flat=True)
        return ZERO, balances.get(pk=generation.request.tenant.pk)
    # What the ledger took: the charge, or what the hold was closed at before (by
    # the sweeper, its lease having lapsed): the client is told this.
    settled = settlement.result()
    return settled.charged, settled.balance


def settle(generation: Generation, usage: Usage) -> credits.Pending[credits.Settlement]:
    hold = generation.hold
    assert hold is not None  # only a held generation is settled
    charged = min(usage_cost(generation, usage), hold.amount)
    return credits.credits_settle_pending(
        hold=hold,
        charged=charged,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )


def output_check(generation: Generation, content: str) -> dict:
    """What the governor's output check reads of a generation and its answer."""
    return {
        "decision": generation.decision,
        "text": content,
        "guard": generation.guard,
        "tool_calls": generation._calls.all(),
        "model_name": generation.model.name if generation.fell_back else None,
    }


def usage_cost(generation: Generation, usage: Usage) -> Decimal:
    """What ``usage`` costs at the prices of the model that answered."""
    return pricing.cost(
        input_price_per_1k=generation.model.input_price_per_1k,
        output_price_per_1k=generation.model.output_price_per_1k,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )


def store_answer(
    generation: Generation, status: str, content: str, usage: Usage, end: StreamEnd | None, isolated
) -> None:
    """The assistant message, unless its chat was deleted meanwhile; either way the
    settlement in the same transaction commits. The chat row is locked against a
    concurrent delete (foreign keys are only checked at commit, too late to catch)."""
    answered = generation.request.chat
    assert answered is not None  # only an answer in a chat is stored
    chat = Chat.objects.select_for_update(no_key=True).filter(pk=answered.pk)
    if chat.values_list("pk", flat=True).first() is None:
        logger.info("chat of answer %s was deleted; answer not stored", generation.message_id)
        return
    fields = {
        "content": content,
        "status": status,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "finish_reason": (end.finish_reason if end else "") or "",
        "tool_calls": generation._calls.all(),
    }
    with isolated():
        if generation._answer_row:  # checkpointed while it streamed
            Message.objects.filter(pk=generation.message_id).update(**fields)
        else:
            Message.objects.create(
                id=generation.message_id,
                chat=answered,
                role=Message.Role.ASSISTANT,
                model=generation.model.name,
                **fields,
            )
