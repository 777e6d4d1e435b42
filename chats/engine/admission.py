"""Admission: steps 1 to 3 of the engine, everything before the first token.

The model resolved and the prompt fitted to its context; the rate limit and the response
cache looked up in one Redis call (before any database write, so floods stay cheap) while
the governor evaluates the request and a concurrent-generation slot is taken; the
Idempotency-Key claimed; then one database call: the governor's audit record, the credit
hold (skipped on a cache hit) and the user's message, with the model's request sent
meanwhile when the tenant's balance last seen covers the hold. A refusal raises
:class:`ApiError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import credits, idempotency, limits, pricing, response_cache
from billing.models import Tenant
from billing.store import UNTRIED
from chatproject import metrics, redis_multiplexed
from chatproject.db import db_call, pipelined
from chatproject.errors import ApiError, ErrorCode
from chats import catalog, failover, stream_log
from chats.context import trim_to_budget
from chats.engine import store
from chats.engine.background import _in_background
from chats.engine.generation import Generation
from chats.engine.types import GenerationRequest, StoredMessage, SystemPrompt, offered_tools
from chats.engine.upstream_call import UpstreamCall
from chats.models import Chat, Message
from chats.providers import estimate_prompt_tokens, message_text
from governor import gate

ZERO = Decimal(0)


async def start_generation(request: GenerationRequest) -> Generation:
    """Admit a request; raises ApiError when it is refused before any token."""
    started = time.monotonic()
    slot = GenerationSlot(request.tenant.pk, uuid.uuid4().hex)
    try:
        generation = await _start_generation(request, slot)
    except BaseException as error:
        slot.give_back()
        if isinstance(error, ApiError):
            metrics.REFUSALS.labels(code=error.code.value).inc()
        raise
    generation.started = started
    return generation


class GenerationSlot:
    """One of the tenant's concurrent generations (:mod:`billing.limits`), taken
    while admission's Redis call is out and given back in every ending."""

    def __init__(self, tenant_id: int, slot_id: str) -> None:
        self.tenant_id, self.id = tenant_id, slot_id
        self._taking: asyncio.Future | None = None

    def take(self, tenant: Tenant) -> asyncio.Future:
        self._taking = asyncio.ensure_future(limits.generation_admit(tenant, self.id))
        return self._taking

    def give_back(self) -> None:
        """Release the slot once it is taken (never cancelled halfway: a taken slot is
        always given back, in the background)."""
        taking, self._taking = self._taking, None
        if taking is not None:
            taking.add_done_callback(self._release_if_taken)

    def _release_if_taken(self, taking: asyncio.Future) -> None:
        if not taking.cancelled() and taking.exception() is None:
            _in_background(limits.generation_release(self.tenant_id, self.id))


async def _start_generation(request: GenerationRequest, slot: GenerationSlot) -> Generation:
    metadata = gate.governor_parse_metadata(request.governor_metadata)
    if not request.messages:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "At least one message is required.",
            details={"messages": ["This list may not be empty."]},
        )
    route = await catalog.aresolve_route(quality=request.quality, model=request.model)
    model = route.first

    max_tokens = min(request.max_tokens or model.max_output_tokens, model.max_output_tokens)
    prompt = None
    if request.system_prompt is not None:
        prompt = await _lead_with_system_prompt(request, model.context_window - max_tokens)
    messages = trim_to_budget(request.messages, model.context_window - max_tokens)
    prompt_tokens = estimate_prompt_tokens(messages)

    cache_key = response_cache.cache_key(
        tenant_id=request.tenant.pk,
        model=model.name,
        messages=messages,
        temperature=request.temperature,
        max_tokens=max_tokens,
        tools=[dataclasses.asdict(tool) for tool in offered_tools(request)] or None,
        tool_choice=request.tool_choice,
        parallel_tool_calls=request.parallel_tool_calls,
        no_cache=not request.use_cache,
        tenant_cache_enabled=request.tenant.response_cache_enabled,
    )
    message_id = uuid.uuid4()
    # A miss joins an identical request still generating (in any process), if there is one.
    # Not one offering tools: the stream log carries text, and its answer may call them.
    joinable = cache_key is not None and not offered_tools(request)
    # The claim goes with the lookup, unless an Idempotency-Key's replay may answer first.
    on_miss = (
        stream_log.claim_on_miss(cache_key, message_id.hex)
        if joinable and cache_key is not None and not request.idempotency_key
        else None
    )
    lookup = asyncio.ensure_future(
        response_cache.rate_limit_and_cache_get(request.tenant, cache_key, claim=on_miss)
    )
    taking = slot.take(request.tenant)  # its command goes out with the lookup's
    cooling = failover.look_up_cooling(route.deployments)  # and so does this one's
    try:
        await asyncio.sleep(0)  # the lookup's command is queued...
        redis_multiplexed.send_queued()  # ...and goes out now,
        # and while Redis answers, the governor evaluates the request: CPU only, with
        # the tenant's policy cached (else admission reads it). Its record is written in
        # admission, so a rate-limited request still writes nothing.
        check = gate.governor_assess_input(
            tenant=request.tenant,
            request_id=request.request_id,
            parts=_governed_parts(request),
            folded=request.folded,
            metadata=metadata,
            model_name=model.name,
            cached_policy_only=True,
        )
        rate, cached = await lookup
        await taking  # raises CONCURRENCY_LIMIT
    except BaseException:
        answered = lookup.done()
        lookup.cancel()
        if on_miss is not None and (on_miss.held is None or not answered):
            _release_claim(cache_key, message_id)  # claimed, or may have been
        raise
    fingerprint = None
    replayed = False
    receipt = None
    if request.idempotency_key:
        # What the client sent: not the server's own part of the prompt (a chat's stored
        # history, a system prompt it built), which a retry finds changed by the first try.
        fingerprint = idempotency.request_fingerprint(
            model=route.asked,  # not the deployment: a tier's turns change it
            chat=str(request.chat.pk) if request.chat else None,
            messages=request.messages[request.trusted_messages :],
            client_context=request.client_context,
            temperature=request.temperature,
            max_tokens=max_tokens,
            tools=[dataclasses.asdict(tool) for tool in offered_tools(request)],
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
        )
        replay = await _claim_key(request, fingerprint)
        if replay is not None:
            cached, replayed, fingerprint, receipt = replay.answer, True, None, replay.receipt
    joinable = joinable and cached is None
    joined = None
    if joinable and cache_key is not None:
        if on_miss is not None and on_miss.held != UNTRIED:
            joined = on_miss.held  # claimed with the lookup (None) or held by that log
        else:
            joined = await stream_log.claim(cache_key, message_id.hex)
    claimed = joinable and joined is None
    steps = settings.TOOL_MAX_STEPS if request.server_tools else 1
    reservation = (
        ZERO
        if cached or joined
        else max(  # the dearest deployment that may answer
            _most_it_costs(d, prompt_tokens, min(max_tokens, d.max_output_tokens), steps)
            for d in route.deployments
        )
    )
    admission = asyncio.ensure_future(
        _admission(
            request,
            metadata,
            model.name,
            reservation,
            cached is None and joined is None,
            not replayed,
            check,
            message_id,
        )
    )
    upstream = None
    if check is not None and check.approved and reservation and _covers(request, reservation):
        # Every refusal but the hold's is ruled out, and the balance last seen covers this
        # hold: the model's request goes out now, right after admission's statement (the
        # longer wait of the two).
        decision = check.decide()
        upstream = UpstreamCall(
            request,
            model=model,
            deployments=route.deployments,
            messages=decision.clean_messages(messages),
            max_tokens=max_tokens,
            decision=decision,
            cooling=cooling,
        )
        upstream.start()
    try:
        decision, hold, user_message = await asyncio.shield(admission)
    except BaseException as error:
        if upstream is not None:  # nothing it sent went anywhere
            _in_background(upstream.aclose())
        if isinstance(error, ApiError) and error.code == ErrorCode.INSUFFICIENT_CREDITS:
            _balances.pop(_balance_key(request.tenant), None)
        if isinstance(error, asyncio.CancelledError):
            # The caller left while the database admitted the request: once it has,
            # give the hold back (the user's message stays stored, like any cancel).
            admission.add_done_callback(_release_abandoned_hold)
        if fingerprint is not None:  # refused or abandoned: a retry may run
            _in_background(
                idempotency.idempotency_abandon(request.tenant.pk, request.idempotency_key)
            )
        if claimed:  # nobody must wait on a log nobody writes
            _release_claim(cache_key, message_id)
        raise
    if hold is not None:
        _balances[_balance_key(request.tenant)] = hold.balance_after
    return Generation(
        request=request,
        model=model,
        deployments=route.deployments,
        messages=decision.clean_messages(messages),  # markup neutralised, if the policy says
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        decision=decision,
        hold=hold,
        cached=cached,
        cache_key=cache_key,
        user_message=user_message,
        rate_limit=rate,
        replayed=replayed,
        idempotency_claim=fingerprint,
        receipt=receipt,
        message_id=message_id,
        slot=slot,
        joined=joined,
        claimed=claimed,
        system_prompt=prompt,
        cooling=cooling,
        upstream=upstream,
    )


# Each tenant's balance after its last hold in this process, for _covers: a request is sent
# to the model before its hold is taken only when the balance last seen would cover it (a
# tenant out of credits costs no model calls; its first request here waits for its hold).
# Keyed as the governor's policy cache is: a new tenant reusing a deleted one's id (SQLite
# reuses ids) never inherits its balance.
_balances: dict[tuple[int, datetime | None], Decimal] = {}


def _balance_key(tenant: Tenant) -> tuple[int, datetime | None]:
    return tenant.pk, tenant.created_at


def _covers(request: GenerationRequest, reservation: Decimal) -> bool:
    known = _balances.get(_balance_key(request.tenant))
    return known is not None and known >= reservation


def _most_it_costs(
    model: catalog.ResolvedModel, prompt_tokens: int, max_tokens: int, steps: int
) -> Decimal:
    """The hold: every model step (at most ``steps``) reads the prompt and all that the
    steps before it added (their output, the tools' results), and writes ``max_tokens``."""
    results = (settings.TOOL_RESULT_MAX_CHARS + 3) // 4  # as estimate_tokens counts them
    growth = max_tokens + results + STEP_OVERHEAD
    return sum(
        (
            pricing.cost(
                input_price_per_1k=model.input_price_per_1k,
                output_price_per_1k=model.output_price_per_1k,
                prompt_tokens=prompt_tokens + step * growth,
                completion_tokens=max_tokens,
            )
            for step in range(max(1, steps))
        ),
        ZERO,
    )


STEP_OVERHEAD = 256  # tokens a step may add besides output and results (the tools' errors)


async def _claim_key(request: GenerationRequest, fingerprint: str) -> idempotency.Claim | None:
    """Claim the request's Idempotency-Key; what to replay when a retry finds one."""
    claim = await idempotency.idempotency_claim(
        request.tenant.pk, request.idempotency_key, fingerprint
    )
    if claim.state == "in_progress":
        raise ApiError(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            "A request with this Idempotency-Key is still running; retry when it is done.",
        )
    if claim.state == "mismatch":
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "This Idempotency-Key was used for a different request.",
            details={"Idempotency-Key": ["Use a new key for a new request."]},
        )
    return claim if claim.state == "replay" else None  # None: this request claimed the key


def _release_claim(cache_key: str | None, message_id: uuid.UUID) -> None:
    if cache_key is not None:
        _in_background(stream_log.release(cache_key, message_id.hex))


def _release_abandoned_hold(admission: asyncio.Future) -> None:
    if admission.cancelled() or admission.exception() is not None:
        return
    hold = admission.result()[1]
    if hold is not None:
        _in_background(db_call(credits.credits_release, hold=hold))


async def _lead_with_system_prompt(request: GenerationRequest, budget: int) -> SystemPrompt:
    """The request's own system prompt, in what ``budget`` leaves after the conversation,
    put first: the server wrote it, so it is trusted but for what it says came from the
    client, and for what it retrieved."""
    assert request.system_prompt is not None
    conversation = estimate_prompt_tokens(request.messages)
    prompt = await db_call(request.system_prompt, max(0, budget - conversation))
    request.messages = [{"role": "system", "content": prompt.system_prompt}, *request.messages]
    request.trusted_messages += 1
    request.client_context = [*request.client_context, *prompt.client_parts]
    request.folded = [*request.folded, *prompt.folded]
    return prompt


def _governed_parts(request: GenerationRequest) -> list[tuple[str, str]]:
    """What the governor checks, as (source, text): everything this request's client
    supplied (stateless formats send the whole conversation, system messages included)."""
    first = request.trusted_messages if len(request.messages) > request.trusted_messages else -1
    numbered = list(enumerate(request.messages, 1))[first:]
    labelled = [(f"message {i} ({m.get('role')})", message_text(m)) for i, m in numbered]
    return [*request.client_context, *labelled]


def _ends_with_user(request: GenerationRequest) -> bool:
    """Whether the request answers a user's message (not tool results the client sent)."""
    return request.messages[-1].get("role") == "user"


async def _admission(
    request: GenerationRequest,
    metadata: Any,
    model_name: str,
    reservation: Decimal,
    needs_hold: bool,
    store_message: bool,
    check: gate.InputCheck | None,
    message_id: uuid.UUID,
) -> tuple[gate.GateDecision, credits.Hold | None, StoredMessage | None]:
    """Admission's writes: from the event loop when :mod:`chats.engine.store` covers the
    request, else (or when the database refused them there) through the ORM."""
    if check is not None and store.admits(request, check):
        try:
            return await store.admit(
                request,
                check,
                model_name=model_name,
                reservation=reservation,
                needs_hold=needs_hold,
                store_message=store_message,
                message_id=message_id,
                user_message=_ends_with_user(request),
            )
        except store.Refused:
            pass
    args = (metadata, model_name, reservation, needs_hold, store_message, check, message_id)
    return await db_call(_admit, request, *args)


def _admit(
    request: GenerationRequest,
    metadata: Any,
    model_name: str,
    reservation: Decimal,
    needs_hold: bool,
    store_message: bool,
    check: gate.InputCheck | None = None,
    message_id: uuid.UUID | None = None,  # the answer's, for the hold
) -> tuple[gate.GateDecision, credits.Hold | None, StoredMessage | None]:
    """Governor, the user's message and the credit hold, in one transaction.

    A refused request stores nothing but its audit record: the governor's refusal raises
    before the hold and the message are sent, and a refused hold (read back once all three
    are out) takes the message out again in the same transaction.
    """
    refusal: ApiError | None = None
    hold = user_message = None
    opened_new = False
    with transaction.atomic():
        try:
            if request.chat is None and request.chat_opener is not None:
                request.chat, opened_new = request.chat_opener()
            check = check or gate.governor_assess_input(  # reads only: the tenant's policy
                tenant=request.tenant,
                request_id=request.request_id,
                parts=_governed_parts(request),
                folded=request.folded,
                metadata=metadata,
                model_name=model_name,
            )
            assert check is not None  # None only when asked for a cached policy alone
            # The audit record, the hold and the message go out together: one round trip.
            with pipelined():
                decision = check.record()  # raises for a rejection, its record sent
                pending = (
                    credits.credits_reserve_pending(
                        tenant_id=request.tenant.pk,
                        amount=reservation,
                        reference=request.request_id,
                        model=model_name,
                        # the answer it pays for, stored in this chat
                        message_id=message_id if request.chat and store_message else None,
                    )
                    if needs_hold
                    else None
                )
                if request.chat is not None and store_message and _ends_with_user(request):
                    stored = Message.objects.create(
                        chat=request.chat,
                        role=Message.Role.USER,
                        content=decision.clean(request.messages[-1].get("content", "")),
                        client_message_id=request.client_message_id,
                        created_at=timezone.now(),
                    )
                    user_message = StoredMessage(stored.id, stored.content, stored.created_at)
            hold = pending.result() if pending else None
        except ApiError as error:
            refusal = error
            if opened_new and request.chat is not None:  # with the message sent alongside
                Chat.objects.filter(pk=request.chat.pk).delete()  # a refused hold, if any
            elif user_message is not None:  # sent alongside a hold that was refused
                Message.objects.filter(pk=user_message.id).delete()
    if refusal is not None:
        raise refusal
    return decision, hold, user_message
