"""A client that disconnects mid-answer is charged for what it was sent: the tokens
delivered are the tokens recorded (hold, stored answer) and the tokens charged for."""

import json
import uuid

import httpx
import pytest

from billing import pricing
from billing.models import CreditHold
from chats.models import LLMModel, Message
from tests.polling import poll
from tests.transports.conftest import unique

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = "[demo:tokens=400][demo:delay=100]"  # a token every 0.1 s: the client's close is heard
N = 12


def read_tokens(url: str, body: dict, headers: dict, token_of) -> tuple[list[str], httpx.Headers]:
    """Stream ``body``, keep the first N tokens (``token_of`` a data line's token, or
    None), then close the connection."""
    tokens: list[str] = []
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and (token := token_of(line[6:])) is not None:
                tokens.append(token)
                if len(tokens) == N:
                    break
    return tokens, response.headers


def charge_for(hold: CreditHold, completion_tokens: int):
    model = LLMModel.objects.get(name=hold.model)
    return pricing.cost(
        input_price_per_1k=model.input_price_per_1k,
        output_price_per_1k=model.output_price_per_1k,
        prompt_tokens=hold.prompt_tokens,
        completion_tokens=completion_tokens,
    )


def settled_hold(reference: str) -> CreditHold:
    return poll(
        lambda: CreditHold.objects.filter(reference=reference).exclude(status="open").first()
    )


def content_token(data: str) -> str | None:
    return json.loads(data).get("content") if data.startswith("{") else None


def test_a_stateless_stream_cut_short_is_charged_for_what_was_delivered(server, account):
    tokens, headers = read_tokens(
        f"{server.url}/api/ai/chat",
        {"messages": [{"role": "user", "content": unique(SLOW)}]},
        account.headers,
        content_token,
    )
    assert len(tokens) == N
    hold = settled_hold(headers["x-request-id"])
    assert (hold.status, hold.completion_tokens) == ("settled", N)
    assert hold.charged == charge_for(hold, N)


def text_delta(data: str) -> str | None:
    chunk = json.loads(data) if data.startswith("{") else {}
    return chunk.get("delta") if chunk.get("type") == "text-delta" else None


def test_a_stored_stream_cut_short_keeps_and_charges_what_was_delivered(server, account):
    room = uuid.uuid4()
    tokens, headers = read_tokens(
        f"{server.url}/api/chat",
        {"prompt": unique(SLOW), "roomId": str(room)},
        account.headers,
        text_delta,
    )
    hold = settled_hold(headers["x-request-id"])
    answer = Message.objects.get(chat_id=headers["x-chat-id"], role="assistant")
    assert (answer.status, answer.content) == ("cancelled", "".join(tokens))
    assert answer.completion_tokens == hold.completion_tokens == N
    assert hold.charged == charge_for(hold, N)
