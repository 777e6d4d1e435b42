"""A ``/ws/chat`` client's messages, read as HTTP bodies are (the JSON reader, the
schema readers), and the answer a chat message starts: a request built by the shared
builder, with the chat's earlier turns and the tenant's tools, as an HTTP request is."""

from typing import Any

from chatproject.json_body import parse_json
from chats.engine import Generation, start_generation
from chats.transports.requests import generation_request
from chats.transports.schemas import websocket as schemas
from chats.ws_session import Session
from tools.registry import request_toolbox


def read_frame(text_data: str | None, bytes_data: bytes | None) -> tuple[str, dict[str, Any]]:
    """A frame's message type and its fields; raises ApiError (VALIDATION_ERROR)."""
    body = text_data if text_data is not None else bytes_data or b""
    return schemas.parse_ws_frame(parse_json(body, what="message"))


async def start_answer(
    session: Session, message: schemas.WsChatMessage, request_id: str
) -> Generation:
    """The generation answering ``message`` in the session's chat; raises ApiError as
    an HTTP request's admission does."""
    history = await session.turns()
    toolbox = await request_toolbox(tenant=session.tenant, exclude=message.exclude_tools)
    return await start_generation(
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
