"""An answer cut short is charged for what was sent: the tokens delivered are the tokens
recorded (hold, stored answer) and the tokens charged for."""

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


def legacy_token(data: str) -> str | None:
    return json.loads(data).get("token") if data.startswith("{") else None


def test_a_stream_cut_short_by_its_client_is_charged_for_what_was_delivered(server, account):
    # The legacy format cannot be resumed: a client that leaves ends its answer.
    tokens, headers = read_tokens(
        f"{server.url}/api/v1/chat/generate",
        {"message": unique(SLOW)},
        account.headers,
        legacy_token,
    )
    assert len(tokens) == N
    hold = settled_hold(headers["x-request-id"])
    assert (hold.status, hold.completion_tokens) == ("settled", N)
    assert hold.charged == charge_for(hold, N)


def text_delta(data: str) -> str | None:
    chunk = json.loads(data) if data.startswith("{") else {}
    return chunk.get("delta") if chunk.get("type") == "text-delta" else None


def test_a_stored_stream_stopped_keeps_and_charges_what_was_delivered(server, account):
    room = uuid.uuid4()
    tokens: list[str] = []
    with httpx.stream(
        "POST",
        f"{server.url}/api/chat",
        json={"prompt": unique(SLOW), "roomId": str(room)},
        headers=account.headers,
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and (token := text_delta(line[6:])) is not None:
                tokens.append(token)
                if len(tokens) == N:  # stopped from elsewhere; this client reads on
                    stop = httpx.post(
                        f"{server.url}/api/chat/{room}/stop", headers=account.headers, timeout=30
                    )
                    assert stop.json()["status"] == "cancelled"
    hold = settled_hold(response.headers["x-request-id"])
    answer = Message.objects.get(chat_id=response.headers["x-chat-id"], role="assistant")
    assert (answer.status, answer.content) == ("cancelled", "".join(tokens))
    assert N <= answer.completion_tokens == hold.completion_tokens == len(tokens) < 400
    assert hold.charged == charge_for(hold, len(tokens))
