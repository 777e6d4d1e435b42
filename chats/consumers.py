"""``/ws/chat``: real-time messaging over WebSocket (docs/wire-formats.md: chat management).

The consumer authenticates, resolves the chat, and for each client message runs the
engine in its own task, so ``cancel``, ``ping`` and disconnects are heard mid-stream.
Tokens go straight to this socket; only whole events (a message received, an answer
ended) are fanned out through the channel layer to the chat's other sockets, which may
live in other processes.

An answer's events also go to its stream log (``chats.stream_log``): a socket that
disconnects leaves its answer running to the end, and a new connection to the same chat,
on any process, resumes it with ``{"type": "resume", "message_id", "after_index"}``.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import orjson
import redis
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from billing import limits
from billing.key_cache import api_key_resolve_async
from billing.services import api_key_recheck
from chatproject import metrics
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode, outage_error, service_unavailable
from chatproject.json_body import parse_json
from chatproject.request_id import current_request_id
from chats import selectors, services, stream_log, ws_events, ws_slots
from chats.engine import (
    ErrorEvent,
    FinishedEvent,
    Generation,
    GenerationRequest,
    TokenEvent,
    start_generation,
)
from chats.models import Chat
from chats.stream_log import LogWriter, WireChunk
from chats.tool_loop import ToolResult, ToolStarted
from chats.transports.sse import resumable_log
from tools.registry import request_toolbox

logger = logging.getLogger(__name__)

# Close codes (4000-4999 are the application's).
CLOSE_UNAUTHORIZED = 4001
CLOSE_BAD_REQUEST = 4400
CLOSE_CHAT_NOT_FOUND = 4004
CLOSE_CONNECTION_LIMIT = 4029
# 1011 would be the protocol's own code, but daphne's WebSocket library sends only 1000 and
# 3000-4999 from an application (it raises on anything else and drops the close frame).
CLOSE_INTERNAL_ERROR = 4500
CLOSE_SERVICE_UNAVAILABLE = 4503  # the database or Redis is down: retry shortly

KEY_RECHECK_SECONDS = 5.0
# daphne drops a handshake not accepted within 5 s (its --websocket_connect_timeout); a
# connect still waiting on the database by then is refused with an error instead.
CONNECT_DEADLINE_SECONDS = 4.0

CLIENT_OPTIONS = (
    "quality",
    "model",
    "temperature",
    "governorMetadata",
    "client_message_id",
    "excludeTools",
)
MAX_CLIENT_MESSAGE_ID_LENGTH = 100  # Message.client_message_id
MAX_INDEX = 2**31 - 1
STREAM_FORMAT = "ws"  # the stream log's name for this transport's chunks


def _query(scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {name: values[0] for name, values in parsed.items() if values}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _group(chat_id) -> str:
    return f"chat.{chat_id}"


class ChatConsumer(AsyncWebsocketConsumer):
    tenant = None
    chat: Chat | None = None
    slot_held = False
    task: asyncio.Task | None = None
    generation: Generation | None = None
    accepted = False
    streaming = False  # a reply is under way (until its final event is sent)
    log: LogWriter | None = None  # the running answer's stream log, when resumable
    detached = False  # the socket is gone: the answer runs on, sending nothing
    resuming: str | None = None  # the stream this socket follows after a resume message
    # The chat's answered turns, loaded once per socket and kept up to date from this
    # socket's exchanges and the other sockets' fanned-out events (best effort, like the
    # channel layer: a lost event costs the model one turn of context, nothing stored).
    history: list[dict[str, str]] | None = None
    _fanning_out: asyncio.Future | None = None

    # --- connection lifecycle -------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        """The consumer's whole life: whatever ends it (a disconnect, a bug in a handler,
        a cancellation by the server), its connection slot is given back."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.disconnect(CLOSE_INTERNAL_ERROR)

    async def connect(self) -> None:
        self.connection_id = uuid.uuid4().hex
        try:
            async with asyncio.timeout(CONNECT_DEADLINE_SECONDS):
                await self._connect()
        except TimeoutError:
            # The database is not answering (or is swamped): say so before daphne drops
            # the handshake unanswered.
            logger.warning("could not open a chat connection in time")
            await self.disconnect(CLOSE_INTERNAL_ERROR)
            await self._refuse(
                service_unavailable("Could not open the connection in time; retry shortly."),
                CLOSE_SERVICE_UNAVAILABLE,
            )
        except Exception as exc:
            unavailable = _unavailable(exc)
            if unavailable is None:
                logger.exception("could not open a chat connection")
            else:
                logger.warning("could not open a chat connection: %r", exc)
            await self.disconnect(CLOSE_INTERNAL_ERROR)  # gives a taken slot back
            if unavailable is not None:
                await self._refuse(unavailable, CLOSE_SERVICE_UNAVAILABLE)
                return
            await self._refuse(
                ApiError(ErrorCode.STREAM_ERROR, "Could not open the connection; retry."),
                CLOSE_INTERNAL_ERROR,
            )

    async def accept(self, subprotocol=None, headers=None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def _connect(self) -> None:
        # Everything is checked before accepting; the handshake is then accepted only to
        # deliver the product's close code (a rejected handshake would be a bare 403).
        query = _query(self.scope)
        raw_key = query.get("api_key") or _header(self.scope, b"x-api-key")
        try:
            api_key = await api_key_resolve_async(raw_key)
        except ApiError as error:
            await self._refuse(error, CLOSE_UNAUTHORIZED)
            return
        self.tenant = api_key.tenant
        self.api_key_id, self.key_checked_at = api_key.pk, time.monotonic()
        user_id = (query.get("user_id") or "").strip()
        if not user_id or len(user_id) > 255 or "\x00" in user_id:
            await self._refuse(
                ApiError(
                    ErrorCode.VALIDATION_ERROR,
                    "user_id is required in the query string (at most 255 characters, no NUL).",
                    details={"user_id": ["This field is required."]},
                ),
                CLOSE_BAD_REQUEST,
            )
            return
        try:
            self.chat, user_created = await db_call(
                self._resolve_chat, user_id, query.get("chat_id")
            )
        except ApiError as error:
            await self._refuse(error, CLOSE_CHAT_NOT_FOUND)
            return
        try:
            await limits.connection_admit(self.tenant, self.connection_id)
        except ApiError as error:
            await self._refuse(error, CLOSE_CONNECTION_LIMIT)
            return
        self.slot_held = True
        metrics.WEBSOCKETS.inc()
        ws_slots.keep(self.connection_id, self.tenant, self._slot_lost, asyncio.current_task())
        self.user_id = user_id
        await self.channel_layer.group_add(_group(self.chat.id), self.channel_name)
        await self.accept()
        await self._send(
            ws_events.connection_established(self.chat.id, user_id, self.connection_id)
        )
        if user_created:
            await self._send(ws_events.user_created(user_id))

    def _resolve_chat(self, user_id: str, chat_id: str | None) -> tuple[Chat, bool]:
        """The requested chat of this end user, or a new chat when none is named."""
        if chat_id:
            chat = selectors.chat_get_for_user(tenant=self.tenant, chat_id=chat_id, user_id=user_id)
            return chat, False
        return services.chat_create(tenant=self.tenant, user_id=user_id)

    async def _refuse(self, error: ApiError, close_code: int) -> None:
        if not self.accepted:
            await self.accept()
        await self._send(ws_events.error_event(error))
        await self.close(code=close_code)

    async def disconnect(self, code: int) -> None:
        """Runs on the client's disconnect and again when the consumer ends (``__call__``):
        each step is done once. A resumable answer under way is left running."""
        await self._stop_generation(keep_running=True)
        if self._fanning_out is not None:
            with contextlib.suppress(Exception):
                await self._fanning_out
        if self.chat is not None and self.slot_held:
            try:
                await self.channel_layer.group_discard(_group(self.chat.id), self.channel_name)
            except Exception:  # Redis down: the membership expires with the group
                logger.warning("channel layer: could not leave the chat's group", exc_info=True)
        if self.slot_held:
            self.slot_held = False
            metrics.WEBSOCKETS.dec()
            await ws_slots.release(self.tenant, self.connection_id)

    async def _key_still_valid(self) -> bool:
        """Keys are revoked, expire and tenants are deactivated while a socket stays open:
        check again (at most every KEY_RECHECK_SECONDS), picking up plan changes too."""
        now = time.monotonic()
        if now - self.key_checked_at < KEY_RECHECK_SECONDS:
            return True
        try:
            api_key = await db_call(api_key_recheck, self.api_key_id)
        except ApiError as error:
            self.streaming = False
            await self._send(ws_events.error_event(error))
            await self.close(code=CLOSE_UNAUTHORIZED)
            return False
        self.tenant, self.key_checked_at = api_key.tenant, now
        return True

    async def _slot_lost(self) -> None:
        """The tenant's cap was reached while this connection's slot had lapsed."""
        await self._error(ErrorCode.CONNECTION_LIMIT, "The connection slot was lost.")
        await self.close(code=CLOSE_CONNECTION_LIMIT)

    # --- client messages ------------------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """One client message; a bug while handling it is answered, never the socket's end."""
        try:
            await super().websocket_receive(message)
        except Exception:
            logger.exception("could not handle a client message")
            await self._error(
                ErrorCode.STREAM_ERROR, f"Unexpected error (request id {current_request_id.get()})."
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if not self.slot_held:  # a refused connection is closing; it takes no messages
            return
        try:
            limits.message_admit(self.tenant, self.connection_id)
        except ApiError as error:
            await self._send(ws_events.error_event(error))
            return
        try:
            payload = parse_json(
                text_data if text_data is not None else bytes_data or b"", what="message"
            )
        except ApiError as error:
            await self._send(ws_events.error_event(error))
            return
        if not isinstance(payload, dict):
            await self._error(ErrorCode.VALIDATION_ERROR, "The message must be a JSON object.")
            return
        kind = payload.get("type", "message")
        if kind == "ping":
            await self._send(ws_events.PONG)
        elif kind == "cancel":
            await self._cancel()
        elif kind == "message":
            await self._start(payload)
        elif kind == "resume":
            await self._resume(payload)
        else:
            await self._error(
                ErrorCode.VALIDATION_ERROR,
                f"Unknown message type {kind!r}.",
                details={"type": ["Use message (default), resume, cancel or ping."]},
            )

    async def _start(self, payload: dict[str, Any]) -> None:
        content = payload.get("content")
        problem = None
        if not isinstance(content, str) or not content.strip():
            problem = "content is required and must be a non-empty string."
        elif len(content) > settings.CHAT_MAX_MESSAGE_LENGTH:
            problem = f"content is longer than {settings.CHAT_MAX_MESSAGE_LENGTH} characters."
        if problem:
            await self._error(ErrorCode.VALIDATION_ERROR, problem, details={"content": [problem]})
            return
        if self.streaming:
            await self._error(
                ErrorCode.VALIDATION_ERROR,
                'A reply is still streaming: wait for it or send {"type": "cancel"}.',
                retryable=True,
            )
            return
        options = {name: payload.get(name) for name in CLIENT_OPTIONS}
        error = _option_error(options)
        if error:
            await self._send(ws_events.error_event(error))
            return
        self.streaming = True
        self.task = asyncio.create_task(self._generate(content, options))

    async def _cancel(self) -> None:
        if not self.streaming:
            await self._error(ErrorCode.VALIDATION_ERROR, "Nothing is streaming.")
            return
        if self.resuming is not None:  # its process ends it; the log brings the end here
            await stream_log.request_stop(self.resuming)
            return
        if self.generation is None:  # still being admitted: nothing to store yet
            await self._stop_generation()
            return
        # Stored cancelled and settled; the stream then ends with message_stream_ended.
        self.generation.stop()

    async def _stop_generation(self, *, keep_running: bool = False) -> None:
        self.streaming = False
        task, self.task = self.task, None
        if task is None or task.done():
            return
        if keep_running and self.log is not None and self.resuming is None:
            self.detached = True  # runs to its end, for a client that resumes
            _detached.add(task)
            task.add_done_callback(_detached.discard)
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # --- resuming an answer ---------------------------------------------------------------

    async def _resume(self, payload: dict[str, Any]) -> None:
        """Replay a running (or just ended) answer of this chat after a token index, then
        follow it live: the client lost the connection it was streaming on."""
        message_id, after = payload.get("message_id"), payload.get("after_index", -1)
        details: dict[str, list[str]] = {}
        log_id = None
        if isinstance(message_id, str) and len(message_id) <= 64:
            with contextlib.suppress(ValueError):
                log_id = uuid.UUID(message_id).hex
        if log_id is None:
            details["message_id"] = ["Must be the id of an answer (message_stream_started)."]
        if isinstance(after, bool) or not isinstance(after, int) or not -1 <= after <= MAX_INDEX:
            details["after_index"] = ["Must be the index of the last token you had, or -1."]
        if details:
            await self._error(
                ErrorCode.VALIDATION_ERROR, "Invalid resume message.", details=details
            )
            return
        if self.streaming:
            await self._error(
                ErrorCode.VALIDATION_ERROR,
                'A reply is still streaming: wait for it or send {"type": "cancel"}.',
                retryable=True,
            )
            return
        header = await stream_log.wire_header(log_id)
        if (
            header is None
            or header.format != STREAM_FORMAT
            or header.tenant_id != self.tenant.pk
            or header.chat_id != str(self.chat.id)
        ):
            await self._error(
                ErrorCode.NOT_FOUND,
                "No answer with this message_id to resume in this chat (or it ended too long ago).",
            )
            return
        self.streaming, self.resuming = True, log_id
        self.task = asyncio.create_task(self._follow(log_id, after))

    async def _follow(self, log_id: str, after: int) -> None:
        """The logged events after token ``after`` (all of them for -1), then live ones."""
        skipping = after >= 0  # until token ``after``: what came before it is skipped
        try:
            async for item in stream_log.follow_wire(log_id):
                if not isinstance(item, WireChunk):
                    break
                if skipping:
                    kind = item.data[: item.data.find(",")]  # '{"type": "..."'
                    if "message_stream_token" in kind:
                        skipping = orjson.loads(item.data)["index"] < after
                        continue
                    if "message_stream_ended" not in kind and '"error"' not in kind:
                        continue
                await self.send(text_data=item.data)
        except (TimeoutError, stream_log.LogTrimmed):
            await self._send(
                ws_events.error_event(
                    ApiError(
                        ErrorCode.STREAM_ERROR,
                        "The answer's stream broke off: the server running it sent nothing more.",
                        retryable=True,
                    ),
                    message_id=str(uuid.UUID(log_id)),
                )
            )
        finally:
            self.streaming, self.resuming = False, None

    # --- one generation ---------------------------------------------------------------

    async def _generate(self, content: str, options: dict[str, Any]) -> None:
        try:
            await self._run_generation(content, options)
        except Exception as exc:  # the engine ended the exchange; tell the client, never go quiet
            unavailable = _unavailable(exc)
            if unavailable is not None:
                logger.warning("generation failed: %r", exc)
                await self._send(ws_events.error_event(unavailable))
                return
            logger.exception("generation failed")
            await self._error(
                ErrorCode.STREAM_ERROR, f"Unexpected error (request id {current_request_id.get()})."
            )
        finally:
            self.streaming = False

    async def _run_generation(self, content: str, options: dict[str, Any]) -> None:
        request_id = uuid.uuid4().hex
        current_request_id.set(request_id)  # this task's log lines carry it
        self.generation = None
        if not await self._key_still_valid():
            return
        try:
            if self.history is None:
                self.history = await db_call(
                    selectors.chat_history,
                    chat=self.chat,
                    limit=settings.CHAT_MAX_HISTORY_MESSAGES,
                )
            toolbox = await request_toolbox(
                tenant=self.tenant, exclude=options["excludeTools"] or ()
            )
            request = GenerationRequest(
                tenant=self.tenant,
                server_tools=toolbox.server_tools,
                chat=self.chat,
                messages=[*self.history, {"role": "user", "content": content}],
                trusted_messages=len(self.history),  # stored history, checked when sent
                quality=options["quality"],
                model=options["model"],
                temperature=0.7 if options["temperature"] is None else options["temperature"],
                governor_metadata=options["governorMetadata"],
                client_message_id=options["client_message_id"] or "",
                request_id=request_id,
            )
            self.generation = generation = await start_generation(request)
        except ApiError as error:
            self.streaming = False
            await self._send(ws_events.error_event(error, request_id=request_id))
            return
        except Exception as exc:
            self.streaming = False
            unavailable = _unavailable(exc)
            if unavailable is not None:
                logger.warning("could not start a generation: %r", exc)
                await self._send(ws_events.error_event(unavailable, request_id=request_id))
                return
            logger.exception("could not start a generation")
            await self._error(
                ErrorCode.STREAM_ERROR, f"Unexpected error (request id {request_id})."
            )
            return
        stored = generation.user_message
        received = ws_events.message_received(self.chat.id, stored, request.client_message_id)
        await self._send(received)
        self._remember("user", stored.content)
        self._fan_out(received)
        self.log = resumable_log(generation, STREAM_FORMAT)
        status = "cancelled"
        try:
            await self._send_stream(ws_events.message_stream_started(self.chat.id, generation))
            async with contextlib.aclosing(generation.events()) as events:
                status = await self._stream(generation, events, request_id)
        finally:
            log, self.log = self.log, None
            if log is not None:
                _in_background(log.close_wire(status))

    async def _stream(self, generation: Generation, events, request_id: str) -> str:
        """Send the answer's events; how it ended (complete, failed or cancelled)."""
        message_id = str(generation.message_id)
        status = "cancelled"
        async for event in events:
            if isinstance(event, TokenEvent):
                await self._send_stream(
                    ws_events.message_stream_token(message_id, event.text, event.index)
                )
            elif isinstance(event, ToolStarted):
                await self._send_stream(ws_events.tool_call_started(message_id, event))
            elif isinstance(event, ToolResult):
                await self._send_stream(ws_events.tool_call_ended(message_id, event))
            elif isinstance(event, FinishedEvent):
                self.streaming = False
                status = event.status
                await self._send_ended(
                    generation, event.status, event.content, event.finish_reason, event
                )
            elif isinstance(event, ErrorEvent):
                self.streaming = False
                status = "failed"
                await self._send_stream(
                    ws_events.error_event(
                        event.error,
                        message_id=message_id,
                        request_id=request_id,
                        partial_content=event.content,
                    )
                )
                self._fan_out(
                    ws_events.message_stream_ended(
                        self.chat.id,
                        generation,
                        status="failed",
                        content=event.content,
                        reason="error",
                        figures=event,
                    )
                )
        return status

    async def _send_ended(
        self, generation: Generation, status: str, content: str, reason: str, figures
    ) -> None:
        ended = ws_events.message_stream_ended(
            self.chat.id, generation, status=status, content=content, reason=reason, figures=figures
        )
        await self._send_stream(ended)
        if status == "complete":
            self._remember("assistant", content, ended.get("tool_calls"))
        self._fan_out(ended)

    def _remember(self, role: str, content: str, tool_calls: list | None = None) -> None:
        if self.history is not None:
            self.history.extend(selectors.replayed_messages(role, content, tool_calls or []))
            del self.history[: -settings.CHAT_MAX_HISTORY_MESSAGES]

    # --- sending ------------------------------------------------------------------------

    async def _send(self, event: dict[str, Any]) -> None:
        if not self.detached:
            await self.send(text_data=orjson.dumps(event).decode())

    async def _send_stream(self, event: dict[str, Any]) -> None:
        """Send an event of the answer, and keep it in its stream log for resuming."""
        text = orjson.dumps(event).decode()
        if self.log is not None:
            self.log.append_chunk(text)
        if not self.detached:
            await self.send(text_data=text)

    async def _error(self, code: ErrorCode, message: str, **kwargs) -> None:
        await self._send(ws_events.error_event(ApiError(code, message, **kwargs)))

    def _fan_out(self, event: dict[str, Any]) -> None:
        """Tell the chat's other sockets (any process) about a whole event, in the
        background and in order: the asking socket's stream does not wait for Redis."""
        previous = self._fanning_out

        async def publish() -> None:
            if previous is not None:
                await previous
            try:
                await self.channel_layer.group_send(
                    _group(self.chat.id),
                    {"type": "chat.event", "event": event, "sender": self.channel_name},
                )
            except Exception:  # best effort; the asking socket has its answer
                logger.exception("channel layer fan-out failed")

        self._fanning_out = asyncio.ensure_future(publish())

    async def chat_event(self, message: dict[str, Any]) -> None:
        if message["sender"] == self.channel_name:
            return
        event = message["event"]
        if event["type"] == "message_received":
            self._remember("user", event["content"])
        elif event["type"] == "message_stream_ended" and event["status"] == "complete":
            self._remember("assistant", event["content"], event.get("tool_calls"))
        await self._send(event)


_detached: set[asyncio.Task] = set()  # answers whose socket left, running to the end


def _in_background(coroutine) -> None:
    task = asyncio.ensure_future(coroutine)
    _detached.add(task)
    task.add_done_callback(_detached.discard)


def _unavailable(exc: BaseException) -> ApiError | None:
    """SERVICE_UNAVAILABLE when ``exc`` is the database or Redis being down."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return service_unavailable("The message service is unavailable; reconnect shortly.")
    return outage_error(exc)


def _option_error(options: dict[str, Any]) -> ApiError | None:
    """Type checks of the optional fields a client message may carry."""
    details: dict[str, list[str]] = {}
    for name in ("quality", "model", "client_message_id"):
        value = options[name]
        if value is not None and not isinstance(value, str):
            details[name] = ["Must be a string."]
    client_message_id = options["client_message_id"]
    if isinstance(client_message_id, str) and len(client_message_id) > MAX_CLIENT_MESSAGE_ID_LENGTH:
        details["client_message_id"] = [f"At most {MAX_CLIENT_MESSAGE_ID_LENGTH} characters."]
    temperature = options["temperature"]
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        details["temperature"] = ["Must be a number from 0 to 2."]
    metadata = options["governorMetadata"]
    if metadata is not None and not isinstance(metadata, dict):
        details["governorMetadata"] = ["Must be an object."]
    excluded = options["excludeTools"]
    if excluded is not None and (
        not isinstance(excluded, list) or not all(isinstance(name, str) for name in excluded)
    ):
        details["excludeTools"] = ["Must be an array of strings."]
    if not details:
        return None
    return ApiError(ErrorCode.VALIDATION_ERROR, "Invalid message options.", details=details)
