"""The streaming engine: the one path from a chat request to a provider and back.

Every transport (WebSocket, the SSE formats, the OpenAI-compatible API) builds a
:class:`GenerationRequest`, calls :func:`start_generation` and encodes the events of the
returned :class:`Generation`. The steps, in order:

1. resolve the model (quality tier or explicit name) and fit the prompt to its context
2. rate limit and response cache lookup, in one Redis call (or in memory; before any
   database write, so floods stay cheap), while the governor evaluates the request
3. admission, in one database call: governor input check (writes the audit record),
   credit hold (skipped on a cache hit), the user's message stored
4. the provider stream (or the cached answer replayed), token by token
5. finalisation, in one database call, whatever the ending (complete, upstream failure,
   cancel or disconnect): the assistant message written, the hold settled at the real
   usage, the governor's output check; then the last event, while the cache is filled
   with a complete answer (the stream ends once it is). If the database does not let it
   finish within ``STREAM_END_WAIT_SECONDS`` (an outage), the stream ends at once with
   SERVICE_UNAVAILABLE and finalisation goes on retrying in the background

While it streams, the process keeps the generation's credit hold leased and checkpoints
its answer every few seconds (:mod:`chats.checkpoints`), so a process that dies leaves
the answer so far for the sweeper to settle.

Refusals before the stream (steps 1 to 3) raise :class:`ApiError`, so HTTP transports can
answer with a status code; failures during the stream become an :class:`ErrorEvent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from billing import concurrency, credits, idempotency, pricing, ratelimit, response_cache
from billing.models import Tenant
from chatproject import metrics
from chatproject.db import db_call, pipelined
from chatproject.errors import ApiError, ErrorCode, is_outage, service_unavailable
from chats import catalog, checkpoints, stream_log, tool_loop
from chats.context import trim_to_budget
from chats.models import Chat, Message
from chats.providers import (
    CompletionRequest,
    ProviderError,
    StreamEnd,
    TokenDelta,
    ToolCallDelta,
    ToolSpec,
    estimate_prompt_tokens,
    message_text,
)
from chats.tool_loop import ServerTool, StepEnd, ToolResult, ToolStarted
from governor import gate

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
# How long finalisation keeps trying through a database outage (backing off, at most 10 s
# apart) after the client was told; past it the open hold is left to the sweeper.
FINALISE_RETRY_SECONDS = 600.0


# --- What transports send in ------------------------------------------------------------


@dataclass
class GenerationRequest:
    tenant: Tenant
    # The conversation; the last one is being answered. Assistant messages may carry
    # tool_calls, answered by role "tool" messages (see CompletionRequest).
    messages: list[dict[str, Any]]
    chat: Chat | None = None  # where the exchange is stored (None: not stored)
    # Or: opens the chat during admission, returning it and whether it made it new; a
    # refused request then leaves no new chat behind. Sync (runs in the admission's
    # transaction).
    chat_opener: Callable[[], tuple[Chat, bool]] | None = None
    quality: str | None = None
    model: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = None
    governor_metadata: Any = None  # raw governorMetadata as the client sent it
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client_message_id: str = ""
    use_cache: bool = True  # False when the client sent Cache-Control: no-cache
    idempotency_key: str = ""  # a retry with the same key replays the stored answer
    # How many leading messages the server supplied itself (stored history it checked
    # when they were sent, or a system prompt it built): the governor checks the rest.
    trusted_messages: int = 0
    # Client-supplied text the server folded into one of those trusted messages (documents
    # quoted in a system prompt it built), as (source, text): the governor checks it too.
    client_context: list[tuple[str, str]] = field(default_factory=list)
    # Text the server retrieved into the prompt itself (knowledge-base chunks), as
    # (source, text): the governor checks it for prompt and markup injection.
    folded: list[tuple[str, str]] = field(default_factory=list)
    # Tools the client offers (it runs them itself: an answer calling them ends with
    # finish_reason "tool_calls"), and how the model may use tools.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    # Tools the server runs itself, by name, in a loop of at most TOOL_MAX_STEPS model calls.
    server_tools: dict[str, ServerTool] = field(default_factory=dict)


# --- What transports get out ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class TokenEvent:
    text: str
    index: int


@dataclass(frozen=True, slots=True)
class FinishedEvent:
    message_id: uuid.UUID
    content: str
    finish_reason: str
    usage: Usage
    credits_charged: Decimal
    credits_remaining: Decimal
    # Every tool call of the answer, {"id", "name", "arguments"} plus "output" or "error"
    # for those the server ran; the ones without either are the client's to answer.
    tool_calls: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error: ApiError
    message_id: uuid.UUID
    content: str  # what was generated before the failure (kept in the stored message)
    usage: Usage
    # None while not settled yet (the database was down when the stream ended).
    credits_charged: Decimal | None
    credits_remaining: Decimal | None


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """A piece of a tool call: the first names it, every piece may add to its arguments.
    ``index`` numbers the calls of one model step, from 0; ``call_id`` is on every piece."""

    step: int
    index: int
    call_id: str
    name: str
    arguments: str
    first: bool


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A model step ended with server tool calls (their ToolResults came before), and
    the next step begins."""

    step: int


Event = (
    TokenEvent | ToolCallEvent | ToolStarted | ToolResult | StepEvent | FinishedEvent | ErrorEvent
)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # the stored message's status: complete, failed or cancelled
    content: str
    usage: Usage
    credits_charged: Decimal
    credits_remaining: Decimal


@dataclass(frozen=True, slots=True)
class Checkpoint:
    content: str  # the answer so far
    tokens: int  # how many tokens it is


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: uuid.UUID
    content: str
    created_at: Any


class Generation:
    """An admitted request: what is known before the first token, and its events."""

    def __init__(
        self,
        *,
        request: GenerationRequest,
        model: catalog.ResolvedModel,
        messages: list[dict[str, str]],
        prompt_tokens: int,
        max_tokens: int,
        decision: gate.GateDecision,
        hold: credits.Hold | None,
        cached: response_cache.CachedAnswer | None,
        cache_key: str | None,
        user_message: StoredMessage | None,
        rate_limit: ratelimit.RateLimitState | None,
        replayed: bool = False,
        idempotency_claim: str | None = None,
        receipt: idempotency.Receipt | None = None,
        message_id: uuid.UUID | None = None,
        slot: GenerationSlot | None = None,
        joined: str | None = None,
        claimed: bool = False,
    ) -> None:
        self.request = request
        self.model = model
        self.messages = messages
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.decision = decision
        self.hold = hold
        self.cached = cached
        self.cache_key = cache_key
        self.user_message = user_message
        self.rate_limit = rate_limit
        self.replayed = replayed  # an Idempotency-Key retry: answered, charged, stored once
        self.idempotency_claim = idempotency_claim  # fingerprint of a key this request holds
        # A replay reports what the first request did (its id, figures, cache status).
        self.receipt = receipt
        # The assistant message's id, known up front (the hold names it).
        self.message_id = receipt.message_id if receipt else message_id or uuid.uuid4()
        self.slot = slot  # one of the tenant's concurrent generations, while it runs
        # An identical request's stream log this one follows instead of generating (its
        # answer is then a free cache hit), or this generation's own log, which identical
        # requests (claimed: its cache key names this log) and resuming clients read.
        self.joined = joined
        self.claimed = claimed
        self.log = stream_log.LogWriter(self.message_id.hex) if self.generates else None
        self.guard = gate.output_guard(decision)  # redacts the answer as it streams, or None
        self.started = time.monotonic()  # when admission began (set by start_generation)
        self._finished = False
        # Set when finalised: what was charged, the balance after, the usage, the status.
        self.outcome: Outcome | None = None
        self._finishing: asyncio.Future | None = None
        self._cache_fill: asyncio.Future | None = None
        self._answer_to_cache: response_cache.CachedAnswer | None = None
        # The answer's tokens while it streams, and what the last checkpoint wrote.
        self._parts: list[str] | None = None
        self._checkpointed = Checkpoint("", 0)
        self._answer_row = False  # a checkpoint stored the answer (status streaming)
        self._calls = _AnswerCalls()

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def generates(self) -> bool:
        """The answer comes from the provider (not the cache, nor an identical request)."""
        return self.cached is None and self.joined is None

    @property
    def cache_status(self) -> str:
        if self.receipt is not None:
            return self.receipt.cache_status
        return "MISS" if self.generates else "HIT"

    @property
    def credits_remaining(self) -> Decimal | None:
        """The balance after the hold (the hold is the most this request can cost)."""
        if self.receipt is not None:
            return self.receipt.credits_remaining
        return self.hold.balance_after if self.hold else None

    async def events(self) -> AsyncIterator[Event]:
        """Tokens (and tool calls, tool results, steps), then one FinishedEvent or
        ErrorEvent. Always finalises, even when the consumer stops early (cancel,
        disconnect): the exchange is then ``cancelled``."""
        parts: list[str] = []
        end: StreamEnd | None = None
        error: ApiError | None = None
        status = Message.Status.CANCELLED  # unless the loop below reaches an ending
        self._parts = parts
        checkpoints.join(self)
        calls = self._calls = _AnswerCalls()
        try:
            if self.cached:
                source = self._replay()
            else:
                source = self._follow() if self.joined else self._provider_stream()
            async with contextlib.aclosing(source) as stream:
                async for item in stream:
                    if isinstance(item, TokenDelta):
                        text = self.guard.feed(item.text) if self.guard else item.text
                        if not text:  # held back until the guard can tell it is safe
                            continue
                        if not parts:
                            metrics.FIRST_TOKEN.observe(time.monotonic() - self.started)
                        parts.append(text)
                        if self.log is not None:
                            self.log.append(text)
                        yield TokenEvent(text, len(parts) - 1)
                    elif isinstance(item, ToolCallDelta):
                        yield calls.piece(item)
                    elif isinstance(item, ToolResult):
                        calls.result(item)
                        yield item
                    elif isinstance(item, ToolStarted):
                        yield item
                    elif isinstance(item, StepEnd):
                        calls.step_ended(item, len(parts))
                        yield StepEvent(item.step)
                    else:
                        end = item
            if self.guard and (text := self.guard.flush()):
                parts.append(text)
                if self.log is not None:
                    self.log.append(text)
                yield TokenEvent(text, len(parts) - 1)
            status = Message.Status.COMPLETE
        except ProviderError as exc:
            error = _provider_error(exc)
            status = Message.Status.FAILED
        except TimeoutError:
            error = ApiError(ErrorCode.LLM_TIMEOUT, "The model did not answer in time.")
            status = Message.Status.FAILED
        except Exception:
            logger.exception("unexpected error while streaming")
            error = ApiError(
                ErrorCode.STREAM_ERROR,
                f"Unexpected error while streaming (request id {self.request.request_id}).",
            )
            status = Message.Status.FAILED
        finally:
            if status == Message.Status.CANCELLED:
                # Cancelled or closed by the consumer: settle and store, then let the
                # cancellation go on. In a task of its own, so a second cancel cannot skip it.
                await self._finished_within(self._start_finishing(status, parts, end))
        if status == Message.Status.CANCELLED:
            return
        figures = await self._finished_within(self._start_finishing(status, parts, end))
        content = "".join(parts)
        charged: Decimal | None
        remaining: Decimal | None
        if figures is None:  # the database is down: the client hears now, the rest waits
            error = error or service_unavailable(
                "The answer could not be saved yet: the database is unavailable. It is "
                "saved and settled once the database is back."
            )
            usage, charged, remaining = self._usage(parts, end), None, None
        else:
            charged, remaining, usage = figures
        try:
            if error is None:
                yield FinishedEvent(
                    self.message_id,
                    content,
                    end.finish_reason if end else "stop",
                    usage,
                    charged,
                    remaining,
                    tuple(calls.all()),
                )
            else:
                yield ErrorEvent(error, self.message_id, content, usage, charged, remaining)
        finally:  # once the last event is out, or the consumer stopped there
            self._start_cache_fill()
        await self._cache_filled()

    async def _provider_stream(self) -> AsyncIterator[tool_loop.LoopItem]:
        request = CompletionRequest(
            model=self.model.upstream_model,
            messages=self.messages,
            temperature=self.request.temperature,
            max_tokens=self.max_tokens,
            tools=offered_tools(self.request),
            tool_choice=self.request.tool_choice,
            parallel_tool_calls=self.request.parallel_tool_calls,
        )
        # One model call, unless the server runs tools (then a bounded loop of them).
        steps = (
            tool_loop.run_steps(
                self.model.provider,
                request,
                server_tools=self.request.server_tools,
                max_steps=settings.TOOL_MAX_STEPS,
                result_chars=settings.TOOL_RESULT_MAX_CHARS,
                guard=functools.partial(gate.governor_check_tool_text, self.decision),
            )
            if self.request.server_tools
            else self.model.provider.stream(request)
        )
        idle = settings.LLM_TIMEOUT_SECONDS
        loop = asyncio.get_running_loop()
        async with contextlib.aclosing(steps) as stream:
            iterator = aiter(stream)
            async with asyncio.timeout(None) as deadline:
                while True:
                    # The idle timeout covers waiting on the upstream only, not the time
                    # the consumer takes with a token.
                    deadline.reschedule(loop.time() + idle)
                    try:
                        item = await anext(iterator)
                    except StopAsyncIteration:
                        return
                    deadline.reschedule(None)
                    yield item

    async def _follow(self) -> AsyncIterator[TokenDelta | StreamEnd]:
        """The answer of the identical request this one joined, as it streams."""
        assert self.joined is not None
        async for item in stream_log.follow(self.joined):
            if isinstance(item, stream_log.LogToken):
                yield TokenDelta(item.text)
            elif item.status == Message.Status.COMPLETE:
                yield StreamEnd(item.finish_reason, item.prompt_tokens, item.completion_tokens)
            else:
                raise ProviderError(
                    "The identical request this one was answered with did not complete.",
                    retryable=True,
                )

    async def _replay(self) -> AsyncIterator[TokenDelta | StreamEnd]:
        cached = self.cached
        assert cached is not None
        for token in cached.tokens:
            yield TokenDelta(token)
        yield StreamEnd(cached.finish_reason, cached.prompt_tokens, cached.completion_tokens)

    def _start_finishing(self, status: str, parts: list[str], end: StreamEnd | None):
        # A task of its own that outlives the stream: through a database outage it keeps
        # retrying after the client was told (see _write_final).
        self._finishing = _in_background(self._finish(status, parts, end))
        return self._finishing

    @staticmethod
    async def _finished_within(finishing: asyncio.Future):
        """What finalisation returned, if it is done within ``STREAM_END_WAIT_SECONDS``
        (None otherwise, or if it gave up). Waiting never cancels it."""
        done, _ = await asyncio.wait({finishing}, timeout=settings.STREAM_END_WAIT_SECONDS)
        return finishing.result() if done else None

    async def finished(self) -> Outcome | None:
        """The outcome, once finalisation (which a cancel does not interrupt) is done;
        None when the database did not let it finish within ``STREAM_END_WAIT_SECONDS``."""
        if self._finishing is not None:
            await self._finished_within(self._finishing)
        if self.outcome is not None:
            self._start_cache_fill()
            await self._cache_filled()
        return self.outcome

    async def _cache_filled(self) -> None:
        if self._cache_fill is not None:
            await asyncio.shield(self._cache_fill)

    def _usage(self, parts: list[str], end: StreamEnd | None) -> Usage:
        calls = self._calls  # the model steps that ended before this one, if any
        if end is not None:
            return Usage(end.prompt_tokens, end.completion_tokens)
        if len(parts) > calls.parts_before_step:  # ended early: this step's prompt was read,
            # and these tokens went out
            return Usage(
                calls.prompt_tokens + self.prompt_tokens,
                calls.completion_tokens + len(parts) - calls.parts_before_step,
            )
        # nothing (more) came back: refused upstream, or left before the first token
        return Usage(calls.prompt_tokens, calls.completion_tokens)

    async def _finish(
        self, status: str, parts: list[str], end: StreamEnd | None
    ) -> tuple[Decimal, Decimal, Usage] | None:
        """Store, settle and audit the exchange; None if the database stayed down for
        ``FINALISE_RETRY_SECONDS`` (its hold is then the sweeper's to close)."""
        if self._finished:  # events() finalises once, whichever way it ends
            raise RuntimeError("generation finalised twice")
        self._finished = True
        await checkpoints.leave(self)
        content = "".join(parts)
        usage = self._usage(parts, end)
        calls = self._calls
        answer = None
        if status == Message.Status.COMPLETE and not calls:  # tool calls are never cached
            answer = response_cache.CachedAnswer(
                content=content,
                tokens=parts,
                finish_reason=end.finish_reason if end else "stop",
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
        self._close_log(status, usage, end)
        if answer is None:  # nothing to cache: identical requests generate on their own
            self._release_claim()
        try:
            charged, remaining = await self._write_final(status, content, usage, end)
        except Exception as exc:
            if not is_outage(exc):
                raise
            logger.error(
                "could not finalise %s: the database stayed unavailable; its credit hold is "
                "left to the sweeper",
                self.message_id,
            )
            await self._close_idempotency_claim(None)
            return None
        finally:  # the generation is over once it is stored and settled (or given up on)
            if self.slot is not None:
                self.slot.give_back()
        self.outcome = Outcome(status, content, usage, charged, remaining)
        metrics.GENERATIONS.labels(status=status, cache=self.cache_status).inc()
        metrics.TOKENS.inc(len(parts))
        metrics.CREDITS.inc(float(charged))
        await self._close_idempotency_claim(answer, charged, remaining)
        # The answer's last event need not wait for the cache: the fill starts once it is
        # out, and the stream ends when the fill is done (see events() and finished()).
        self._answer_to_cache = answer
        if self.receipt is not None:  # the replay charged nothing; it reports the original
            return self.receipt.credits_charged, self.receipt.credits_remaining, usage
        return charged, remaining, usage

    async def _write_final(self, *args) -> tuple[Decimal, Decimal]:
        """:meth:`_finish_in_db`, tried again with backoff while the database is down, for
        up to ``FINALISE_RETRY_SECONDS``."""
        delay, give_up = 0.5, time.monotonic() + FINALISE_RETRY_SECONDS
        while True:
            try:
                return await db_call(self._finish_in_db, *args)
            except Exception as exc:
                if not is_outage(exc) or time.monotonic() + delay > give_up:
                    raise
                logger.warning(
                    "finalising %s: database unavailable (%s); again in %.1f s",
                    self.message_id,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _start_cache_fill(self) -> None:
        if self._cache_fill is None:
            self._cache_fill = _in_background(self._fill_cache(self._answer_to_cache))

    async def _fill_cache(self, answer: response_cache.CachedAnswer | None) -> None:
        """Keep a complete answer (not a replayed one) for the next identical request;
        identical requests join this one's stream log until it is kept."""
        if answer is None or not self.generates or not self.cache_key:
            return
        try:
            await response_cache.cache_put(self.cache_key, answer)
        except Exception:  # a cache outage must not fail a delivered answer
            logger.exception("response cache write failed")
        self._release_claim()

    def _close_log(self, status: str, usage: Usage, end: StreamEnd | None) -> None:
        if self.log is not None:
            finish_reason = (end.finish_reason if end else "") or "stop"
            _in_background(
                self.log.close(
                    stream_log.LogEnd(
                        status, finish_reason, usage.prompt_tokens, usage.completion_tokens
                    )
                )
            )

    def _release_claim(self) -> None:
        if self.claimed and self.cache_key:
            self.claimed = False
            _in_background(stream_log.release(self.cache_key, self.message_id.hex))

    async def _close_idempotency_claim(
        self, answer: response_cache.CachedAnswer | None, charged: Decimal, remaining: Decimal
    ) -> None:
        """Keep the answer for retries with the same key once it is settled; give the key
        up for an answer that failed or was cancelled."""
        if self.idempotency_claim is None:
            return
        tenant_id, key = self.request.tenant.pk, self.request.idempotency_key
        try:
            if answer is None:
                await idempotency.idempotency_abandon(tenant_id, key)
            else:
                receipt = idempotency.Receipt(
                    self.message_id, charged, remaining, self.cache_status
                )
                await idempotency.idempotency_complete(
                    tenant_id, key, self.idempotency_claim, answer, receipt
                )
        except Exception:  # an outage must not fail a delivered answer
            logger.exception("idempotency record write failed")

    def _finish_in_db(
        self, status: str, content: str, usage: Usage, end: StreamEnd | None
    ) -> tuple[Decimal, Decimal]:
        """One transaction, one commit, written in as few round trips as it can be.

        First with the writes sent together (see :func:`pipelined`): a database error then
        surfaces only once they are all out, and fails the whole transaction. It is rolled
        back and written again one write at a time, each isolated, so that the settlement
        commits whatever else fails (an answer the database refuses to store, say).
        """
        try:
            with transaction.atomic():
                return self._finalise(status, content, usage, end, together=True)
        except DatabaseError as exc:
            if is_outage(exc):  # no use writing one by one: the caller tries again later
                raise
            logger.warning("finalising %s together failed; once more one by one", self.message_id)
        with transaction.atomic():
            return self._finalise(status, content, usage, end, together=False)

    def _finalise(
        self, status: str, content: str, usage: Usage, end: StreamEnd | None, *, together: bool
    ) -> tuple[Decimal, Decimal]:
        isolated = contextlib.nullcontext if together else transaction.atomic  # savepoints
        with pipelined() if together else contextlib.nullcontext():
            if self.request.chat is not None and not self.replayed:
                try:
                    self._store_answer(status, content, usage, end, isolated)
                except DatabaseError:
                    if together:
                        raise
                    logger.exception("could not store the answer %s", self.message_id)
            try:  # also for empty answers: it completes the audit record
                with isolated():
                    gate.governor_check_output(
                        decision=self.decision,
                        text=content,
                        guard=self.guard,
                        tool_calls=self._calls.all(),
                    )
            except DatabaseError:
                if together:
                    raise
                logger.exception("governor output check failed")
            except Exception:  # the answer is delivered; a failed post-check is logged
                logger.exception("governor output check failed")
            settlement = self._settle(usage) if self.hold is not None else None
        if settlement is None:
            balances = Tenant.objects.values_list("credit_balance", flat=True)
            return ZERO, balances.get(pk=self.request.tenant.pk)
        # What the ledger took: the charge, or what the hold was closed at before (by
        # the sweeper, its lease having lapsed): the client is told this.
        settled = settlement.result()
        return settled.charged, settled.balance

    def _settle(self, usage: Usage) -> credits.Pending[credits.Settlement]:
        charged = min(
            pricing.cost(
                input_price_per_1k=self.model.input_price_per_1k,
                output_price_per_1k=self.model.output_price_per_1k,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            ),
            self.hold.amount,
        )
        return credits.credits_settle_pending(
            hold=self.hold,
            charged=charged,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    def _store_answer(
        self, status: str, content: str, usage: Usage, end: StreamEnd | None, isolated
    ) -> None:
        """The assistant message, unless its chat was deleted meanwhile; either way the
        settlement in the same transaction commits. The chat row is locked against a
        concurrent delete (foreign keys are only checked at commit, too late to catch)."""
        chat = Chat.objects.select_for_update(no_key=True).filter(pk=self.request.chat.pk)
        if chat.values_list("pk", flat=True).first() is None:
            logger.info("chat of answer %s was deleted; answer not stored", self.message_id)
            return
        fields = {
            "content": content,
            "status": status,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "finish_reason": (end.finish_reason if end else "") or "",
            "tool_calls": self._calls.all(),
        }
        with isolated():
            if self._answer_row:  # checkpointed while it streamed
                Message.objects.filter(pk=self.message_id).update(**fields)
            else:
                Message.objects.create(
                    id=self.message_id,
                    chat=self.request.chat,
                    role=Message.Role.ASSISTANT,
                    model=self.model.name,
                    **fields,
                )

    # --- Checkpoints (chats.checkpoints calls these, every few seconds) -------------------

    def checkpoint_due(self) -> Checkpoint | None:
        """The answer so far, when it grew since the last checkpoint. Only a generation
        with a credit hold is checkpointed: the sweeper closes what a dead process left
        by its hold."""
        parts, last = self._parts, self._checkpointed
        if parts is None or self._finished or len(parts) == last.tokens:
            return None
        if self.hold is None or self.hold.hold_id is None:
            return None
        return Checkpoint(last.content + "".join(parts[last.tokens :]), len(parts))

    def write_checkpoint(self, point: Checkpoint) -> None:
        """Store the answer so far with status ``streaming`` (stateless: its token counts
        on the hold). Sync, one statement, committed on its own; a failure is logged."""
        try:
            if self.request.chat is None:
                credits.hold_checkpoint(
                    hold_id=self.hold.hold_id,
                    prompt_tokens=self.prompt_tokens,
                    completion_tokens=point.tokens,
                )
            elif self._answer_row:
                Message.objects.filter(pk=self.message_id, status=Message.Status.STREAMING).update(
                    content=point.content, completion_tokens=point.tokens
                )
            else:
                Message.objects.create(
                    id=self.message_id,
                    chat=self.request.chat,
                    role=Message.Role.ASSISTANT,
                    content=point.content,
                    status=Message.Status.STREAMING,
                    model=self.model.name,
                    prompt_tokens=self.prompt_tokens,
                    completion_tokens=point.tokens,
                )
                self._answer_row = True
        except DatabaseError:  # its chat was deleted, or the database is away
            logger.warning("checkpoint of %s failed", self.message_id, exc_info=True)
        self._checkpointed = point  # a failed one is not retried until the answer grows


class _AnswerCalls:
    """The tool calls of one answer, over all its steps, as they stream."""

    def __init__(self) -> None:
        self.step = 0
        self.calls: dict[tuple[int, int], dict[str, Any]] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        self.prompt_tokens = self.completion_tokens = 0  # of the steps that ended
        self.parts_before_step = 0  # tokens of the answer's text before this step

    def __bool__(self) -> bool:
        return bool(self.calls)

    def piece(self, piece: ToolCallDelta) -> ToolCallEvent:
        key = (self.step, piece.index)
        call = self.calls.get(key)
        first = call is None
        if call is None:
            call_id = piece.id or f"call_{uuid.uuid4().hex[:24]}"
            call = self.calls[key] = {"id": call_id, "name": piece.name or "", "arguments": ""}
            self.by_id[call_id] = call
        call["arguments"] += piece.arguments
        return ToolCallEvent(
            self.step, piece.index, call["id"], call["name"], piece.arguments, first
        )

    def result(self, result: ToolResult) -> None:
        call = self.by_id.get(result.call_id)
        if call is not None:
            call.update(
                {"output": result.output} if result.error is None else {"error": result.error}
            )

    def step_ended(self, end: StepEnd, tokens: int) -> None:
        self.step += 1
        self.prompt_tokens += end.prompt_tokens
        self.completion_tokens += end.completion_tokens
        self.parts_before_step = tokens

    def all(self) -> list[dict[str, Any]]:
        return [
            {**call, "arguments": call["arguments"] or "{}"}
            for _, call in sorted(self.calls.items())
        ]


def offered_tools(request: GenerationRequest) -> tuple[ToolSpec, ...]:
    """The client's tools and the server's, as the model is offered them."""
    server = tuple(tool.spec for tool in request.server_tools.values())
    return (*request.tools, *server)


def _provider_error(exc: ProviderError) -> ApiError:
    details = {"upstream_status": exc.status} if exc.status else None
    return ApiError(ErrorCode(exc.code), exc.message, retryable=exc.retryable, details=details)


# --- Admission --------------------------------------------------------------------------


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
    """One of the tenant's concurrent generations (:mod:`billing.concurrency`), taken
    while admission's Redis call is out and given back in every ending."""

    def __init__(self, tenant_id: int, slot_id: str) -> None:
        self.tenant_id, self.id = tenant_id, slot_id
        self._taking: asyncio.Future | None = None

    def take(self, tenant: Tenant) -> asyncio.Future:
        self._taking = asyncio.ensure_future(concurrency.generation_slot_acquire(tenant, self.id))
        return self._taking

    def give_back(self) -> None:
        """Release the slot once it is taken (never cancelled halfway: a taken slot is
        always given back, in the background)."""
        taking, self._taking = self._taking, None
        if taking is not None:
            taking.add_done_callback(self._release_if_taken)

    def _release_if_taken(self, taking: asyncio.Future) -> None:
        if not taking.cancelled() and taking.exception() is None:
            _in_background(concurrency.generation_slot_release(self.tenant_id, self.id))


async def _start_generation(request: GenerationRequest, slot: GenerationSlot) -> Generation:
    metadata = gate.governor_parse_metadata(request.governor_metadata)
    if not request.messages:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "At least one message is required.",
            details={"messages": ["This list may not be empty."]},
        )
    model = await catalog.aresolve_model(quality=request.quality, model=request.model)

    max_tokens = min(request.max_tokens or model.max_output_tokens, model.max_output_tokens)
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
    lookup = asyncio.ensure_future(
        response_cache.rate_limit_and_cache_get(request.tenant, cache_key)
    )
    taking = slot.take(request.tenant)  # its command goes out with the lookup's
    try:
        await asyncio.sleep(0)  # the lookup's command goes out...
        # ...and while Redis answers, the governor evaluates the request: CPU only, with
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
        lookup.cancel()
        raise
    fingerprint = None
    replayed = False
    receipt = None
    if request.idempotency_key:
        fingerprint = idempotency.request_fingerprint(
            model=model.name,
            messages=messages,
            temperature=request.temperature,
            max_tokens=max_tokens,
            tools=[dataclasses.asdict(tool) for tool in offered_tools(request)],
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
        )
        replay = await _claim_key(request, fingerprint)
        if replay is not None:
            cached, replayed, fingerprint, receipt = replay.answer, True, None, replay.receipt
    message_id = uuid.uuid4()
    # A miss joins an identical request still generating (in any process), if there is one.
    # Not one offering tools: the stream log carries text, and its answer may call them.
    joinable = cached is None and cache_key is not None and not offered_tools(request)
    joined = None
    if joinable:
        joined = await stream_log.claim(cache_key, message_id.hex)
    claimed = joinable and joined is None
    steps = settings.TOOL_MAX_STEPS if request.server_tools else 1
    reservation = (
        ZERO if cached or joined else _most_it_costs(model, prompt_tokens, max_tokens, steps)
    )
    admission = asyncio.ensure_future(
        db_call(
            _admit,
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
    try:
        decision, hold, user_message = await asyncio.shield(admission)
    except BaseException as error:
        if isinstance(error, asyncio.CancelledError):
            # The caller left while the database admitted the request: once it has,
            # give the hold back (the user's message stays stored, like any cancel).
            admission.add_done_callback(_release_abandoned_hold)
        if fingerprint is not None:  # refused or abandoned: a retry may run
            _in_background(
                idempotency.idempotency_abandon(request.tenant.pk, request.idempotency_key)
            )
        if claimed:  # identical requests must not wait on a log nobody writes
            _in_background(stream_log.release(cache_key, message_id.hex))
        raise
    return Generation(
        request=request,
        model=model,
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
    )


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


def _in_background(coroutine) -> asyncio.Future:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _release_abandoned_hold(admission: asyncio.Future) -> None:
    if admission.cancelled() or admission.exception() is not None:
        return
    hold = admission.result()[1]
    if hold is not None:
        _in_background(db_call(credits.credits_release, hold=hold))


_background: set[asyncio.Future] = set()  # keeps fire-and-forget tasks referenced


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
            if opened_new:  # with the message sent alongside a refused hold, if any
                Chat.objects.filter(pk=request.chat.pk).delete()
            elif user_message is not None:  # sent alongside a hold that was refused
                Message.objects.filter(pk=user_message.id).delete()
    if refusal is not None:
        raise refusal
    return decision, hold, user_message
