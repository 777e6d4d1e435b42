"""The streaming engine: the one path from a chat request to a provider and back.

Every transport (WebSocket, the SSE formats, the OpenAI-compatible API) builds a
:class:`GenerationRequest`, calls :func:`start_generation` and encodes the events of the
returned :class:`Generation`. The steps, in order:

1. resolve the model (quality tier or explicit name) and fit the prompt to its context
2. rate limit and response cache lookup, in one Redis call (or in memory; before any
   database write, so floods stay cheap), while the governor evaluates the request
3. admission, in one database call: governor input check (writes the audit record),
   credit hold (skipped on a cache hit), the user's message stored
4. the provider stream (or the cached answer replayed), token by token; its request goes
   out while step 3's statement is out when only the hold could still refuse it
   (:mod:`~chats.engine.upstream_call`), and nothing it sends is passed on before
   admission has committed
5. finalisation, in one database call, whatever the ending (complete, upstream failure,
   cancel or disconnect): the assistant message written, the hold settled at the real
   usage, the governor's output check; then the last event, while the cache is filled
   with a complete answer (the stream ends once it is). If the database does not let it
   finish within ``STREAM_END_WAIT_SECONDS`` (an outage), the stream ends at once with
   SERVICE_UNAVAILABLE and finalisation goes on retrying in the background

While it streams, the process keeps the generation's credit hold leased and checkpoints
its answer every few seconds (:mod:`chats.checkpoints`), so a process that dies leaves
the answer so far for the sweeper to settle.

One module per concept, in the order of the steps: :mod:`~chats.engine.types` (what goes
in and comes out), :mod:`~chats.engine.admission` (steps 1 to 3),
:mod:`~chats.engine.upstream_call` and :mod:`~chats.engine.generation` (step 4), and
:mod:`~chats.engine.finalisation` (step 5).

Refusals before the stream (steps 1 to 3) raise :class:`ApiError`, so HTTP transports can
answer with a status code; failures during the stream become an :class:`ErrorEvent`.
"""

from chats.engine.admission import GenerationSlot, start_generation
from chats.engine.generation import Generation
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
    ToolCallEvent,
    Usage,
    offered_tools,
)

__all__ = [
    "Checkpoint",
    "ErrorEvent",
    "Event",
    "FinishedEvent",
    "Generation",
    "GenerationRequest",
    "GenerationSlot",
    "Outcome",
    "StepEvent",
    "StoredMessage",
    "SystemPrompt",
    "TokenEvent",
    "ToolCallEvent",
    "Usage",
    "offered_tools",
    "start_generation",
]
