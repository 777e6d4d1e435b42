"""``/ws/chat``: real-time messaging over WebSocket.

The consumer keeps the connection's lifecycle and encodes the engine's events; what comes
in goes through the same steps as an HTTP request: the session (key, end user, chat:
:mod:`chats.ws_session`), the plan's limits (:mod:`billing.limits`), the body parsers
(:mod:`chats.transports.schemas`) and the request builder (:mod:`chats.transports.requests`).
Each client message runs the engine in its own task, so ``cancel``, ``ping`` and
disconnects are heard mid-stream. Tokens go straight to this socket; only whole events (a
message received, an answer ended) are fanned out through the channel layer to the chat's
other sockets, which may live in other processes.

An answer's events also go to its stream log (``chats.stream_log``): a socket that
disconnects leaves its answer running to the end, and a new connection to the same chat,
on any process, resumes it with ``{"type": "resume", "message_id", "after_index"}``.
"""

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import orjson
import redis
from channels.generic.websocket import AsyncWebsocketConsumer

from billing import limits
from chatproject import metrics
from chatproject.errors import ApiError, ErrorCode, outage_error, service_unavailable
from chatproject.json_body import parse_json
from chatproject.request_id import current_request_id
from chats import stream_log, ws_events, ws_resume, ws_slots
from chats.engine import ErrorEvent, FinishedEvent, Generation, TokenEvent, start_generation
from chats.stream_log import LogWriter
from chats.tool_loop import ToolResult, ToolStarted
from chats.transports.generation_stream import resumable_log
from chats.transports.requests import generation_request
from chats.transports.schemas import websocket as schemas
from chats.ws_session import CLOSE_UNAUTHORIZED, Refused, Session, session_open
from tools.registry import request_toolbox

logger = logging.getLogger(__name__)

CLOSE_CONNECTION_LIMIT = 4029
# 1011 would be the protocol's own code, but daphne's WebSocket library sends only 1000 and
# 3000-4999 from an application (it raises on anything else and drops the close frame).
CLOSE_INTERNAL_ERROR = 4500
CLOSE_SERVICE_UNAVAILABLE = 4503  # the database or Redis is down: retry shortly
# daphne drops a handshake not accepted within 5 s (its --websocket_connect_timeout); a
# connect still waiting on the database by then is refused with an error instead.
CONNECT_DEADLINE_SECONDS = 4.0
BUSY = 'A reply is still streaming: wait for it or send {"type": "cancel"}.'


class ChatConsumer(AsyncWebsocketConsumer):
    session: Session | None = None
    slot_held = False
    accepted = False
    task: asyncio.Task | None = None
    generation: Generation | None = None
    streaming = False  # a reply is under way (until its final event is sent)
    log: LogWriter | None = None  # the running answer's stream log, when resumable
    detached = False  # the socket is gone: the answer runs on, sending nothing
    resuming: str | None = None  # the stream this socket follows after a resume message
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
        # Everything is checked before accepting; the handshake is then accepted only to
        # deliver the product's close code (a rejected handshake would be a bare 403).
        self.connection_id = uuid.uuid4().hex
        try:
            async with asyncio.timeout(CONNECT_DEADLINE_SECONDS):
                await self._open()
        except Refused as refused:
            await self._refuse(refused.error, refused.close_code)
        except TimeoutError:  # the database is not answering (or is swamped): say so
            logger.warning("could not open a chat connection in time")
            await self.disconnect(CLOSE_INTERNAL_ERROR)
            error = service_unavailable("Could not open the connection in time; retry shortly.")
            await self._refuse(error, CLOSE_SERVICE_UNAVAILABLE)
        except Exception as exc:
            await self.disconnect(CLOSE_INTERNAL_ERROR)  # gives a taken slot back
            unavailable = _unavailable(exc)
            if unavailable is None:
                logger.exception("could not open a chat connection")
                error = ApiError(ErrorCode.STREAM_ERROR, "Could not open the connection; retry.")
                await self._refuse(error, CLOSE_INTERNAL_ERROR)
            else:
                logger.warning("could not open a chat connection: %r", exc)
                await self._refuse(unavailable, CLOSE_SERVICE_UNAVAILABLE)

    async def _open(self) -> None:
        self.session = session = await session_open(self.scope)
        try:
            await limits.connection_admit(session.tenant, self.connection_id)
        except ApiError as error:
            raise Refused(error, CLOSE_CONNECTION_LIMIT) from None
        self.slot_held = True
        metrics.WEBSOCKETS.inc()
        ws_slots.keep(self.connection_id, session.tenant, self._slot_lost, asyncio.current_task())
        await self.channel_layer.group_add(_group(session.chat.id), self.channel_name)
        await self.accept()
        chat_id, user_id = session.chat.id, session.user_id
        await self._send(ws_events.connection_established(chat_id, user_id, self.connection_id))
        if session.user_created:
            await self._send(ws_events.user_created(user_id))

    async def accept(self, subprotocol=None, headers=None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

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
        if self.slot_held:
            self.slot_held = False
            try:
                await self.channel_layer.group_discard(
                    _group(self.session.chat.id), self.channel_name
                )
            except Exception:  # Redis down: the membership expires with the group
                logger.warning("channel layer: could not leave the chat's group", exc_info=True)
            metrics.WEBSOCKETS.dec()
            await ws_slots.release(self.session.tenant, self.connection_id)

    async def _slot_lost(self) -> None:
        """The tenant's cap was reached while this connection's slot had lapsed."""
        await self._error(ApiError(ErrorCode.CONNECTION_LIMIT, "The connection slot was lost."))
        await self.close(code=CLOSE_CONNECTION_LIMIT)

    # --- client messages ------------------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """One client message; a bug while handling it is answered, never the socket's end."""
        try:
            await super().websocket_receive(message)
        except Exception:
            logger.exception("could not handle a client message")
            await self._unexpected(current_request_id.get())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if not self.slot_held:  # a refused connection is closing; it takes no messages
            return
        try:
            limits.message_admit(self.session.tenant, self.connection_id)
            kind, payload = schemas.parse_ws_frame(
                parse_json(
                    text_data if text_data is not None else bytes_data or b"", what="message"
                )
            )
            if kind == "ping":
                await self._send(ws_events.PONG)
            elif kind == "cancel":
                await self._cancel()
            elif self.streaming:
                raise ApiError(ErrorCode.VALIDATION_ERROR, BUSY, retryable=True)
            elif kind == "resume":
                log_id, after = schemas.parse_ws_resume(payload)
                await ws_resume.check(log_id, self.session)
                self.streaming, self.resuming = True, log_id
                self.task = asyncio.create_task(self._follow(log_id, after))
            else:
                message = schemas.parse_ws_message(payload)
                self.streaming = True
                self.task = asyncio.create_task(self._generate(message))
        except ApiError as error:
            await self._error(error)

    async def _cancel(self) -> None:
        if not self.streaming:
            raise ApiError(ErrorCode.VALIDATION_ERROR, "Nothing is streaming.")
        if self.resuming is not None:  # its process ends it; the log brings the end here
            await stream_log.request_stop(self.resuming)
        elif self.generation is None:  # still being admitted: nothing to store yet
            await self._stop_generation()
        else:  # stored cancelled and settled; the stream then ends with message_stream_ended
            self.generation.stop()

    async def _stop_generation(self, *, keep_running: bool = False) -> None:
        self.streaming = False
        task, self.task = self.task, None
        if task is None or task.done():
            return
        if keep_running and self.log is not None and self.resuming is None:
            self.detached = True  # runs to its end, for a client that resumes
            ws_resume.run_detached(task)
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _follow(self, log_id: str, after: int) -> None:
        """A resumed answer: its logged events after token ``after``, then live ones."""
        try:
            async for text in ws_resume.events_after(log_id, after):
                await self.send(text_data=text)
        except ApiError as error:
            await self._error(error, message_id=str(uuid.UUID(log_id)))
        finally:
            self.streaming, self.resuming = False, None

    # --- one generation ---------------------------------------------------------------

    async def _generate(self, message: schemas.WsChatMessage) -> None:
        request_id = uuid.uuid4().hex
        current_request_id.set(request_id)  # this task's log lines carry it
        self.generation, session = None, self.session
        try:
            try:
                await session.recheck()
            except ApiError as error:
                self.streaming = False
                await self._error(error)
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
            history = await session.turns()
            toolbox = await request_toolbox(tenant=session.tenant, exclude=message.exclude_tools)
            self.generation = generation = await start_generation(
                generation_request(
                    session.tenant,
                    [*history, {"role": "user", "content": message.content}],
                    request_id=request_id,
                    chat=session.chat,
                    trusted_messages=len(history),  # stored history, checked when sent
                    server_tools=toolbox.server_tools,
                    **message.options(),
                )
            )
            await self._stream(generation, request_id)
        except ApiError as error:
            await self._error(error, request_id=request_id)
        except Exception as exc:  # the engine ended the exchange; tell the client, never go quiet
            unavailable = _unavailable(exc)
            if unavailable is None:
                logger.exception("generation failed")
                await self._unexpected(request_id)
            else:
                logger.warning("generation failed: %r", exc)
                await self._error(unavailable, request_id=request_id)
        finally:
            self.streaming = False

    async def _stream(self, generation: Generation, request_id: str) -> None:
        chat_id, message_id = self.session.chat.id, str(generation.message_id)
        if generation.user_message is not None:  # not for a replay: nothing was stored
            received = ws_events.message_received(
                chat_id, generation.user_message, generation.request.client_message_id
            )
            await self._send(received)
            self.session.remember("user", generation.user_message.content)
            self._fan_out(received)
        self.log = resumable_log(generation, ws_resume.STREAM_FORMAT)
        status = "cancelled"
        try:
            await self._send_stream(ws_events.message_stream_started(chat_id, generation))
            async with contextlib.aclosing(generation.events()) as events:
                async for event in events:
                    if isinstance(event, TokenEvent):
                        sent = ws_events.message_stream_token(message_id, event.text, event.index)
                    elif isinstance(event, ToolStarted):
                        sent = ws_events.tool_call_started(message_id, event)
                    elif isinstance(event, ToolResult):
                        sent = ws_events.tool_call_ended(message_id, event)
                    elif isinstance(event, FinishedEvent | ErrorEvent):
                        self.streaming = False
                        status = event.status if isinstance(event, FinishedEvent) else "failed"
                        await self._send_ended(generation, event, status, request_id)
                        continue
                    else:
                        continue
                    await self._send_stream(sent)
        finally:
            log, self.log = self.log, None
            if log is not None:
                ws_resume.close_log(log, status)

    async def _send_ended(self, generation: Generation, event, status: str, request_id: str):
        failed = isinstance(event, ErrorEvent)
        ended = ws_events.message_stream_ended(
            self.session.chat.id,
            generation,
            status=status,
            content=event.content,
            reason="error" if failed else event.finish_reason,
            figures=event,
        )
        if failed:  # this socket hears the error; the chat's other sockets, the end
            await self._send_stream(
                ws_events.error_event(
                    event.error,
                    message_id=str(generation.message_id),
                    request_id=request_id,
                    partial_content=event.content,
                )
            )
        else:
            await self._send_stream(ended)
        if generation.replayed:
            return  # the first answer was remembered and fanned out
        if status == "complete":
            self.session.remember("assistant", event.content, ended.get("tool_calls"))
        self._fan_out(ended)

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

    async def _error(self, error: ApiError, **fields: Any) -> None:
        await self._send(ws_events.error_event(error, **fields))

    async def _unexpected(self, request_id: str) -> None:
        error = ApiError(ErrorCode.STREAM_ERROR, f"Unexpected error (request id {request_id}).")
        await self._error(error)

    def _fan_out(self, event: dict[str, Any]) -> None:
        """Tell the chat's other sockets (any process) about a whole event, in the
        background and in order: the asking socket's stream does not wait for Redis."""
        previous = self._fanning_out

        async def publish() -> None:
            if previous is not None:
                await previous
            try:
                await self.channel_layer.group_send(
                    _group(self.session.chat.id),
                    {"type": "chat.event", "event": event, "sender": self.channel_name},
                )
            except Exception:  # best effort; the asking socket has its answer
                logger.exception("channel layer fan-out failed")

        self._fanning_out = asyncio.ensure_future(publish())

    async def chat_event(self, message: dict[str, Any]) -> None:
        if message["sender"] != self.channel_name:
            self.session.remember_event(message["event"])
            await self._send(message["event"])


def _group(chat_id) -> str:
    return f"chat.{chat_id}"


def _unavailable(exc: BaseException) -> ApiError | None:
    """SERVICE_UNAVAILABLE when ``exc`` is the database or Redis being down."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return service_unavailable("The message service is unavailable; reconnect shortly.")
    return outage_error(exc)
