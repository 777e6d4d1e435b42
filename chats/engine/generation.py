"""A generation: an admitted request and its events, from the provider stream (or the
cached answer replayed, or the identical request it follows) to the last event. Each
ending hands over to :mod:`chats.engine.finalisation`; while it streams, the process keeps
its credit hold leased and checkpoints its answer (:mod:`chats.checkpoints`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError

from billing import credits, idempotency, limits, response_cache
from chatproject import metrics
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode, service_unavailable
from chats import catalog, checkpoints, stream_log, tool_loop
from chats.engine import finalisation
from chats.engine.answer_calls import AnswerCalls
from chats.engine.background import _in_background
from chats.engine.idle_deadline import IdleDeadline
from chats.engine.types import (
    Checkpoint,
    ErrorEvent,
    Event,
    FinishedEvent,
    GenerationRequest,
    Outcome,
    StepEvent,
    StoredMessage,
    SystemPrompt,
    TokenEvent,
    Usage,
)
from chats.engine.upstream_call import END, UpstreamCall
from chats.models import Message
from chats.providers import (
    CompletionRequest,
    ProviderError,
    StreamEnd,
    TokenDelta,
    ToolCallDelta,
    estimate_prompt_tokens,
)
from chats.tool_loop import StepEnd, ToolResult, ToolStarted
from governor import gate

if TYPE_CHECKING:
    from chats.engine.admission import GenerationSlot

logger = logging.getLogger(__name__)


class Generation:
    """An admitted request: what is known before the first token, and its events."""

    def __init__(
        self,
        *,
        request: GenerationRequest,
        model: catalog.ResolvedModel,
        messages: list[dict[str, str]],
        deployments: tuple[catalog.ResolvedModel, ...] = (),
        prompt_tokens: int,
        max_tokens: int,
        decision: gate.GateDecision,
        hold: credits.Hold | None,
        cached: response_cache.CachedAnswer | None,
        cache_key: str | None,
        user_message: StoredMessage | None,
        rate_limit: limits.RateLimitState | None,
        replayed: bool = False,
        idempotency_claim: str | None = None,
        receipt: idempotency.Receipt | None = None,
        message_id: uuid.UUID | None = None,
        slot: GenerationSlot | None = None,
        joined: str | None = None,
        claimed: bool = False,
        system_prompt: SystemPrompt | None = None,
        cooling: Awaitable[set[str]] | None = None,
        upstream: UpstreamCall | None = None,
    ) -> None:
        self.request = request
        self._upstream = upstream  # the model's steps, if admission sent them already
        self._cooling = cooling  # the deployments' cool-downs, being read
        self.model = model  # the deployment answering: the first, or one it fell back to
        # The deployments it may be answered by, in the order they are tried.
        self.deployments = deployments or (model,)
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
        self.system_prompt = system_prompt  # the one the request built, if it built one
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
        self._stop_requested = False
        self._upstream_wait: IdleDeadline | None = None  # while the model is streamed from
        self._answer_row = False  # a checkpoint stored the answer (status streaming)
        self._calls = AnswerCalls()
        self.last_event: FinishedEvent | ErrorEvent | None = None  # once events() yields it

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def fell_back(self) -> bool:
        """Another deployment than the first answers (the first failed before a token)."""
        return self.model is not self.deployments[0]

    def _served(self, deployment: catalog.ResolvedModel, request: CompletionRequest) -> None:
        """The deployment that answers, known before its first token is passed on: its
        name and prices are the answer's from here on."""
        if deployment is not self.model:
            self.model = deployment
            self.prompt_tokens = estimate_prompt_tokens(request.messages)
            self.max_tokens = request.max_tokens or self.max_tokens
            if self.hold is not None and self.hold.hold_id is not None:
                # The hold names the model whose prices the sweeper settles it at, should
                # this process die, and usage by model: the one answering, from now on.
                _in_background(_rename_hold(self.hold.hold_id, deployment.name))

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

    def stop(self) -> None:
        """End the answer at its next token, or now if it waits on the model: it is stored
        ``cancelled`` with what it had and settled for that, and :meth:`events` ends with a
        FinishedEvent of status ``cancelled`` (so its stream ends in its format for whoever
        reads it, which a consumer closing the events early would not give)."""
        if self._stop_requested or self._finished:
            return
        self._stop_requested = True
        if self._upstream_wait is not None:
            self._upstream_wait.expire()

    async def events(self) -> AsyncIterator[Event]:
        """Tokens (and tool calls, tool results, steps), then one FinishedEvent or
        ErrorEvent. Always finalises, even when the consumer stops early (cancel,
        disconnect): the exchange is then ``cancelled``."""
        parts: list[str] = []
        end: StreamEnd | None = None
        error: ApiError | None = None
        status = Message.Status.CANCELLED  # unless the loop below reaches an ending
        stopped = False  # by stop(): cancelled, and the last event still sent
        self._parts = parts
        checkpoints.join(self)
        calls = self._calls = AnswerCalls()
        source: AsyncGenerator[tool_loop.LoopItem, None]
        try:
            if self.cached:
                source = self._replay()
            else:
                source = self._follow() if self.joined else self._provider_stream()
            async with contextlib.aclosing(source) as stream:
                async for item in stream:
                    if self._stop_requested:
                        raise _Stopped
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
        except _Stopped:
            stopped = True
        except ProviderError as exc:
            error = _provider_error(exc)
            status = Message.Status.FAILED
        except TimeoutError:
            if self._stop_requested:  # stop() cut the wait on the model short
                stopped = True
            else:
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
            if status == Message.Status.CANCELLED and not stopped:
                # Cancelled or closed by the consumer: settle and store, then let the
                # cancellation go on. In a task of its own, so a second cancel cannot skip it.
                await self._finished_within(self._start_finishing(status, parts, end))
        if status == Message.Status.CANCELLED and not stopped:
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
        last: FinishedEvent | ErrorEvent
        if error is None:
            assert charged is not None and remaining is not None  # stored and settled
            last = FinishedEvent(
                self.message_id,
                content,
                "cancelled" if stopped else end.finish_reason if end else "stop",
                usage,
                charged,
                remaining,
                tuple(calls.all()),
                None if stopped else await self._keep_answer(content),
                status,
            )
        else:
            last = ErrorEvent(error, self.message_id, content, usage, charged, remaining)
        self.last_event = last
        try:
            yield last
        finally:  # once the last event is out, or the consumer stopped there
            self._start_cache_fill()
        await self._cache_filled()

    async def _keep_answer(self, content: str) -> Any:
        """What the request's ``keep_answer`` returns for the complete answer; None without
        one, or when it failed (the answer is delivered and settled either way)."""
        if self.request.keep_answer is None:
            return None
        try:
            return await db_call(self.request.keep_answer, content)
        except Exception:
            logger.exception("keeping the answer %s failed", self.message_id)
            return None

    def upstream_call(self) -> UpstreamCall:
        """The model's steps for this generation (not sent yet)."""
        return UpstreamCall(
            self.request,
            model=self.model,
            deployments=self.deployments,
            messages=self.messages,
            max_tokens=self.max_tokens,
            decision=self.decision,
            cooling=self._cooling,
        )

    async def _provider_stream(self) -> AsyncGenerator[tool_loop.LoopItem, None]:
        # Sent by admission already, or now.
        call, self._upstream = self._upstream or self.upstream_call(), None
        call.served_by(self._served)
        idle = settings.LLM_TIMEOUT_SECONDS
        wait = call.first_wait
        async with contextlib.aclosing(call):
            # The idle timeout covers waiting on the upstream only, not the time the
            # consumer takes with a token.
            deadline = self._upstream_wait = IdleDeadline()  # stop() expires it
            try:
                while True:
                    if self._stop_requested:
                        raise _Stopped
                    deadline.waiting(wait)
                    wait = idle
                    try:
                        item = await call.next()
                    except asyncio.CancelledError:
                        if deadline.timed_out():
                            raise TimeoutError from None
                        raise
                    finally:
                        deadline.done()
                    if item is END:
                        return
                    yield item
            finally:
                self._upstream_wait = None
                deadline.close()

    async def _follow(self) -> AsyncGenerator[TokenDelta | StreamEnd, None]:
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

    async def _replay(self) -> AsyncGenerator[TokenDelta | StreamEnd, None]:
        cached = self.cached
        assert cached is not None
        for token in cached.tokens:
            yield TokenDelta(token)
        yield StreamEnd(cached.finish_reason, cached.prompt_tokens, cached.completion_tokens)

    def _start_finishing(self, status: str, parts: list[str], end: StreamEnd | None):
        # A task of its own that outlives the stream: through a database outage it keeps
        # retrying after the client was told (see finalisation.write_final).
        self._finishing = _in_background(finalisation.finish(self, status, parts, end))
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

    def _start_cache_fill(self) -> None:
        if self._cache_fill is None:
            self._cache_fill = _in_background(finalisation.fill_cache(self, self._answer_to_cache))

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
        assert self.hold is not None and self.hold.hold_id is not None  # checkpoint_due's
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


class _Stopped(Exception):
    """Generation.stop() was called."""


async def _rename_hold(hold_id: int, model: str) -> None:
    try:
        await db_call(credits.hold_rename_model, hold_id=hold_id, model=model)
    except Exception:  # the settlement is right either way; only the hold's label is not
        logger.exception("could not name model %s on hold %s", model, hold_id)


def _provider_error(exc: ProviderError) -> ApiError:
    details = {"upstream_status": exc.status} if exc.status else None
    return ApiError(ErrorCode(exc.code), exc.message, retryable=exc.retryable, details=details)
