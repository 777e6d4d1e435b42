"""One provider over a request's deployments: the next one when one fails before a token.

:class:`Failover` streams from the first deployment of a route (``chats.catalog``) that
answers. A deployment that fails before its first item (connection error, time-out, 429
or 5xx: the retryable errors) is counted for its cool-down (``chats.cooldown``) and the
next one is tried, each with the request fitted to its own limits; deployments cooling
down are skipped. Once one has sent an item the request stays on it: a failure after that
ends the stream as it would without fallbacks, since trying again would send the client
the answer's beginning twice. Later model calls of the same request (the steps of a tool
loop) go to the deployment that answered the first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

from django.conf import settings

from chats import cooldown
from chats.catalog import ResolvedModel
from chats.context import trim_to_budget
from chats.providers import (
    CompletionRequest,
    LLMConnectionError,
    LLMProviderError,
    LLMTimeoutError,
    Provider,
    ProviderError,
    StreamItem,
)

logger = logging.getLogger(__name__)

Served = Callable[[ResolvedModel, CompletionRequest], None]


def provider_for(
    deployments: Sequence[ResolvedModel],
    on_served: Served,
    cooling: Awaitable[set[str]] | None = None,
) -> Provider:
    """The provider a request streams from: its one deployment's own when there is
    nothing to fall back on and no cool-down to keep (no overhead), else a Failover
    (``cooling``: the cool-downs :func:`look_up_cooling` started reading, if it did)."""
    if len(deployments) == 1 and not _counts(deployments[0]):
        return deployments[0].provider
    return Failover(deployments, on_served, cooling)


def look_up_cooling(deployments: Sequence[ResolvedModel]) -> asyncio.Future[set[str]] | None:
    """Start reading which of ``deployments`` are cooling down, for :func:`provider_for`:
    started with admission's own Redis commands, the read costs the first token no round
    trip of its own. None when there is nothing to read."""
    counted = [d.name for d in deployments if _counts(d)]
    return asyncio.ensure_future(cooldown.cooling(counted)) if counted else None


def _counts(deployment: ResolvedModel) -> bool:
    """Whether the deployment's failures are counted: cool-downs are on, and it has an
    upstream (the offline demo has none to spare)."""
    return settings.MODEL_COOLDOWN_FAILURES > 0 and not deployment.offline


class Failover(Provider):
    """Streams from the first of ``deployments`` that answers; ``on_served`` hears which
    one did (and the request it was sent) before its first item is passed on. The
    request given to :meth:`stream` is fitted to the first deployment already."""

    def __init__(
        self,
        deployments: Sequence[ResolvedModel],
        on_served: Served,
        cooling: Awaitable[set[str]] | None = None,
    ) -> None:
        self.deployments = tuple(deployments)
        self.name = self.deployments[0].provider.name
        self._on_served = on_served
        self._cooling = cooling
        self._serving: ResolvedModel | None = None

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        first: list[StreamItem] = []
        if self._serving is not None:  # a later step of the same request stays on it
            deployment = self._serving
            stream = deployment.provider.stream(self._fit(request, deployment))
        else:
            deployment, stream, item = await self._first_answer(request)
            first.append(item)
        # Its items are read here rather than through another generator (each layer costs
        # every token a resumption); a retryable failure among them counts against it.
        try:
            for item in first:
                yield item
            async for item in stream:
                yield item
        except ProviderError as exc:
            if exc.retryable:
                await self._failed(deployment)
            raise
        finally:
            await stream.aclose()

    async def _first_answer(
        self, request: CompletionRequest
    ) -> tuple[ResolvedModel, AsyncGenerator[StreamItem, None], StreamItem]:
        """The first deployment that answers, its stream and its first item."""
        candidates = await self._candidates()
        for position, deployment in enumerate(candidates):
            attempt = self._fit(request, deployment)
            stream = deployment.provider.stream(attempt)
            try:
                # Each attempt waits for its first item as long as one provider call would.
                async with asyncio.timeout(settings.LLM_TIMEOUT_SECONDS):
                    first = await anext(stream)
            except (ProviderError, TimeoutError, StopAsyncIteration) as exc:
                await stream.aclose()
                error = _as_provider_error(exc, deployment)
                if not error.retryable:
                    raise error from None
                await self._failed(deployment)
                if position == len(candidates) - 1:
                    raise error from None
                logger.warning(
                    "model %s failed before its first token (%s); trying %s",
                    deployment.name,
                    error.code,
                    candidates[position + 1].name,
                )
                continue
            self._serving = deployment
            self._on_served(deployment, attempt)
            return deployment, stream, first
        raise AssertionError("unreachable: the last candidate's failure is raised")

    async def _candidates(self) -> list[ResolvedModel]:
        if self._cooling is not None:
            cooling = await self._cooling
        else:
            counted = [d.name for d in self.deployments if _counts(d)]
            cooling = await cooldown.cooling(counted) if counted else set()
        candidates = [d for d in self.deployments if d.name not in cooling]
        if not candidates:
            names = ", ".join(d.name for d in self.deployments)
            raise LLMProviderError(
                f"Every model this request may use ({names}) failed repeatedly and is "
                f"cooling down for up to {settings.MODEL_COOLDOWN_SECONDS:g} s; retry later.",
                status=503,
            )
        return candidates

    async def _failed(self, deployment: ResolvedModel) -> None:
        if _counts(deployment):
            await cooldown.record_failure(deployment.name)

    def _fit(self, request: CompletionRequest, deployment: ResolvedModel) -> CompletionRequest:
        """The request for ``deployment``: its upstream id, output limit and context."""
        if deployment is self.deployments[0]:
            return request  # what the engine planned for
        max_tokens = deployment.max_output_tokens
        if request.max_tokens is not None:
            max_tokens = min(request.max_tokens, max_tokens)
        messages = trim_to_budget(request.messages, deployment.context_window - max_tokens)
        return dataclasses.replace(
            request, model=deployment.upstream_model, max_tokens=max_tokens, messages=messages
        )


def _as_provider_error(exc: BaseException, deployment: ResolvedModel) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, TimeoutError):
        return LLMTimeoutError(
            f"Model {deployment.name!r} did not answer within {settings.LLM_TIMEOUT_SECONDS:g}s"
        )
    return LLMConnectionError(f"Model {deployment.name!r} ended its stream without an answer")
