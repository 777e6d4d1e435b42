"""The model's side of a generation: the request sent to its deployments (through the
failover, and the tool loop when the server runs tools) and the items that come back.

Admission may send it while its own database statement is out (:meth:`UpstreamCall.start`):
once the governor has let the request through and every refusal but the credit hold's is
ruled out, the upstream's first answer and the statement's commit overlap instead of
following each other. Nothing the upstream sends goes anywhere before admission has
committed: the first item waits in a task of its own, and a refused admission closes the
call (:meth:`aclose`), with nothing stored and nothing charged.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from django.conf import settings

from chats import failover, tool_loop
from chats.engine.types import GenerationRequest, offered_tools
from chats.providers import CompletionRequest
from governor import gate

if TYPE_CHECKING:
    from chats import catalog

END = object()  # what next() returns once the model's items are over


class UpstreamCall:
    """One generation's model steps, read item by item (by one task at a time)."""

    def __init__(
        self,
        request: GenerationRequest,
        *,
        model: catalog.ResolvedModel,
        deployments: tuple[catalog.ResolvedModel, ...],
        messages: list[dict[str, str]],
        max_tokens: int,
        decision: gate.GateDecision,
        cooling: Awaitable[set[str]] | None,
    ) -> None:
        completion = CompletionRequest(
            model=model.upstream_model,
            messages=messages,
            temperature=request.temperature,
            max_tokens=max_tokens,
            tools=offered_tools(request),
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
        )
        self._served_by = None  # the generation's callback, once it has taken the call
        self._served: tuple | None = None  # a deployment that answered before that
        # The first deployment, or the next one when it fails before its first token.
        provider = failover.provider_for(deployments, self._on_served, cooling)
        # One model call, unless the server runs tools (then a bounded loop of them).
        self._steps = (
            tool_loop.run_steps(
                provider,
                completion,
                server_tools=request.server_tools,
                max_steps=settings.TOOL_MAX_STEPS,
                result_chars=settings.TOOL_RESULT_MAX_CHARS,
                guard=functools.partial(gate.governor_check_tool_text, decision),
            )
            if request.server_tools
            else provider.stream(completion)
        )
        idle = settings.LLM_TIMEOUT_SECONDS
        # Trying deployments in turn, the first item may take one idle timeout each: the
        # failover bounds each attempt's wait, this is only a backstop.
        self.first_wait = idle if provider is model.provider else idle * (len(deployments) + 1)
        self._first: asyncio.Task | None = None

    def start(self) -> None:
        """Send the request now; its first item is read in a task of its own until
        :meth:`next` asks for it."""
        self._first = asyncio.ensure_future(self._next())

    def served_by(self, callback) -> None:
        """Tell ``callback(deployment, request)`` which deployment answers (before its first
        item is passed on), also if it answered while admission was still out."""
        self._served_by = callback
        if self._served is not None:
            callback(*self._served)

    def _on_served(self, deployment, request) -> None:
        if self._served_by is None:
            self._served = (deployment, request)
        else:
            self._served_by(deployment, request)

    def next(self) -> Awaitable:
        """The next item, or :data:`END`, to await (a cancel of that wait cancels the read
        of a first item sent early as well)."""
        first, self._first = self._first, None
        return first if first is not None else anext(self._steps, END)

    async def _next(self):
        return await anext(self._steps, END)

    async def aclose(self) -> None:
        """Stop the call: a first item still being read is cancelled, the stream closed."""
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            await asyncio.wait({first})  # the stream can close once nothing reads it
            if not first.cancelled():
                first.exception()  # retrieved: the call is given up either way
        await self._steps.aclose()
