"""``/ws/chat``: real-time messaging over WebSocket.

The consumer keeps the connection's lifecycle and encodes the engine's events
(:mod:`chats.ws_events`); what comes in goes through the same steps as an HTTP request:
the session (key, end user, chat: :mod:`chats.ws_session`), the plan's limits
(:mod:`billing.limits`; the connection's slot: :mod:`chats.ws_slots`), the body parsers
and the request builder (:mod:`chats.ws_messages`). Each client message runs in its own
task (:mod:`chats.ws_reply`), so ``cancel``, ``ping`` and disconnects are heard
mid-stream. Tokens go straight to this socket; only whole events (a message received, an
answer ended) are fanned out to the chat's other sockets, in any process
(:mod:`chats.ws_fanout`).

An answer's events also go to its stream log: a socket that disconnects leaves it running
to the end, and a new connection to the chat, on any process, resumes it with ``{"type":
"resume", "message_id", "after_index"}`` (:mod:`chats.ws_resume`).
"""

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, WebSocketReceiveEvent

from billing import limits
from chatproject.errors import ApiError, ErrorCode
from chatproject.request_id import current_request_id
from chatproject.send_hints import SEND_WITH_NEXT
from chats import ws_errors, ws_events, ws_messages, ws_resume, ws_slots
from chats.engine import ErrorEvent, FinishedEvent, Generation
from chats.transports.generation_stream import events_of, resumable_log
from chats.transports.schemas import websocket as schemas
from chats.ws_base import AsyncWebsocketConsumerOnLoop
from chats.ws_errors import CLOSE_CONNECTION_LIMIT, CLOSE_INTERNAL_ERROR
from chats.ws_fanout import ChatGroup
from chats.ws_reply import Reply
from chats.ws_session import CLOSE_UNAUTHORIZED, Refused, Session, session_open

if TYPE_CHECKING:
    from channels.consumer import _ChannelScope

logger = logging.getLogger(__name__)

# daphne drops a handshake not accepted within 5 s (its --websocket_connect_timeout); a
# connect still waiting on the database by then is refused with an error instead.
CONNECT_DEADLINE_SECONDS = 4.0
BUSY = 'A reply is still streaming: wait for it or send {"type": "cancel"}.'


class ChatConsumer(AsyncWebsocketConsumerOnLoop):
    session: Session  # set before the connection is accepted
    slot_held = False
    accepted = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = ChatGroup()
        self.reply = Reply()

    # --- connection lifecycle -------------------------------------------------------

    async def __call__(
        self, scope: "_ChannelScope", receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
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
            await self._refuse(refused)
        except Exception as exc:  # the database is down or slow, or a bug
            await self.disconnect(CLOSE_INTERNAL_ERROR)  # gives a taken slot back
            await self._refuse(ws_errors.connect_refusal(exc))

    async def _open(self) -> None:
        self.session = session = await session_open(self.scope)
        try:
            await ws_slots.take(
                self.connection_id, session.tenant, self._slot_lost, asyncio.current_task()
            )
        except ApiError as error:
            raise Refused(error, CLOSE_CONNECTION_LIMIT) from None
        self.slot_held = True
        await self.group.join(self.channel_layer, session.chat.id, self.channel_name)
        await self.accept()
        chat_id, user_id = session.chat.id, session.user_id
        await self._send(ws_events.connection_established(chat_id, user_id, self.connection_id))
        if session.user_created:
            await self._send(ws_events.user_created(user_id))

    async def accept(
        self, subprotocol: str | None = None, headers: list[tuple[str, str]] | None = None
    ) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def _refuse(self, refused: Refused) -> None:
        if not self.accepted:
            await self.accept()
        await self._send(ws_events.error_event(refused.error))
        await self.close(code=refused.close_code)

    async def disconnect(self, code: int) -> None:
        """Runs on the client's disconnect and again when the consumer ends (``__call__``):
        each step is done once. A resumable answer under way is left running."""
        await self.reply.stop(keep_running=True)
        await self.group.published()
        if self.slot_held:
            self.slot_held = False
            await self.group.leave()
            await ws_slots.give_back(self.session.tenant, self.connection_id)

    async def _slot_lost(self) -> None:
        """The tenant's cap was reached while this connection's slot had lapsed."""
        await self._error(ApiError(ErrorCode.CONNECTION_LIMIT, "The connection slot was lost."))
        await self.close(code=CLOSE_CONNECTION_LIMIT)

    # --- client messages ------------------------------------------------------------

    async def websocket_receive(self, message: WebSocketReceiveEvent) -> None:
        """One client message; a bug while handling it is answered, never the socket's end."""
        try:
            await super().websocket_receive(message)
        except Exception:
            logger.exception("could not handle a client message")
            await self._error(ws_errors.unexpected(current_request_id.get()))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.slot_held:  # a refused connection is closing; it takes no messages
            return
        try:
            limits.message_admit(self.session.tenant, self.connection_id)
            kind, payload = ws_messages.read_frame(text_data, bytes_data)
            if kind == "ping":
                await self._send(ws_events.PONG)
            elif kind == "cancel":
                await self.reply.cancel()
            elif self.reply.streaming:
                raise ApiError(ErrorCode.VALIDATION_ERROR, BUSY, retryable=True)
            elif kind == "resume":
                log_id, after = schemas.parse_ws_resume(payload)
                await ws_resume.check(log_id, self.session)
                self.reply.start(self._follow(log_id, after), resuming=log_id)
            else:
                self.reply.start(self._generate(schemas.parse_ws_message(payload)))
        except ApiError as error:
            await self._error(error)

    async def _follow(self, log_id: str, after: int) -> None:
        """A resumed answer: its logged events after token ``after``, then live ones."""
        try:
            async for text in ws_resume.events_after(log_id, after):
                await self.send(text_data=text)
        except ApiError as error:
            await self._error(error, message_id=str(uuid.UUID(log_id)))

    # --- one answer -------------------------------------------------------------------

    async def _generate(self, message: schemas.WsChatMessage) -> None:
        request_id = uuid.uuid4().hex
        current_request_id.set(request_id)  # this task's log lines carry it
        reply, reply.generation = self.reply, None
        try:
            try:
                await self.session.recheck()
            except ApiError as error:
                reply.streaming = False
                await self._error(error)
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
            reply.generation = await ws_messages.start_answer(self.session, message, request_id)
            await self._stream(reply.generation, request_id)
        except ApiError as error:
            await self._error(error, request_id=request_id)
        except Exception as exc:  # the engine ended the exchange; tell the client, never go quiet
            await self._send(ws_errors.generation_failure(exc, request_id))

    async def _stream(self, generation: Generation, request_id: str) -> None:
        chat_id, message_id = self.session.chat.id, str(generation.message_id)
        if generation.user_message is not None:  # not for a replay: nothing was stored
            received = ws_events.message_received(
                chat_id, generation.user_message, generation.request.client_message_id
            )
            await self._send(received, with_next=True)
            self.session.remember("user", generation.user_message.content)
            self.group.publish(received)
        self.reply.log = resumable_log(generation, ws_resume.STREAM_FORMAT)
        status = "cancelled"
        try:
            started = ws_events.message_stream_started(chat_id, generation)
            await self._send_stream(started, with_next=True)  # the first token follows
            first = True
            async with events_of(generation) as events:
                async for event in events:
                    if isinstance(event, FinishedEvent | ErrorEvent):
                        self.reply.streaming = False
                        status = event.status if isinstance(event, FinishedEvent) else "failed"
                        await self._send_ended(generation, event, status, request_id)
                    elif (sent := ws_events.answer_event(message_id, event)) is not None:
                        # The first goes out at once; the frames after it that are ready
                        # together (tokens read in one go) go out in one write.
                        await self._send_stream(sent, with_next=not first)
                        first = False
        finally:
            log, self.reply.log = self.reply.log, None
            if log is not None:
                ws_resume.close_log(log, status)

    async def _send_ended(
        self, generation: Generation, end: FinishedEvent | ErrorEvent, status: str, request_id: str
    ) -> None:
        chat_id = self.session.chat.id
        here, ended = ws_events.answer_ended(chat_id, generation, end, status, request_id)
        await self._send_stream(here)  # this socket hears the error; the others, the end
        if generation.replayed:
            return  # the first answer was remembered and fanned out
        if status == "complete":
            self.session.remember("assistant", end.content, ended.get("tool_calls"))
        self.group.publish(ended)

    # --- sending ------------------------------------------------------------------------

    async def _send(self, event: Mapping[str, Any], *, with_next: bool = False) -> None:
        if not self.reply.detached:
            await self._send_text(orjson.dumps(event).decode(), with_next)

    async def _send_stream(self, event: ws_events.Event, *, with_next: bool = False) -> None:
        """Send an event of the answer, and keep it in its stream log for resuming."""
        text = orjson.dumps(event).decode()
        if self.reply.log is not None:
            self.reply.log.append_chunk(text)
        if not self.reply.detached:
            await self._send_text(text, with_next)

    async def _send_text(self, text: str, with_next: bool) -> None:
        """One frame; ``with_next``: one the next frame follows at once, written with it
        (see :data:`chatproject.send_hints.SEND_WITH_NEXT`)."""
        if with_next:  # (a key ASGI's message types do not name)
            message: Any = {"type": "websocket.send", "text": text, SEND_WITH_NEXT: True}
            await self.base_send(message)
        else:
            await self.send(text_data=text)

    async def _error(self, error: ApiError, **fields: Any) -> None:
        await self._send(ws_events.error_event(error, **fields))

    async def chat_event(self, message: dict[str, Any]) -> None:
        """An event another socket of the chat fanned out."""
        if not self.group.sent_here(message):
            self.session.remember_event(message["event"])
            await self._send(message["event"])
