"""The plan's rate limit on the transport views that do not run the engine (the engine
counts its own requests), each answering 429 in its own error format."""

import uuid

import httpx
import openai
import pytest
import redis
from django.conf import settings

from billing.limits import rate_key
from tests.factories import Account, account_for, make_tenant
from tests.transports.conftest import error_body

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 20  # the free plan: 10 requests a minute, 20 at once


@pytest.fixture
def free_account(server) -> Account:
    """A free-plan tenant with a full allowance (Redis keeps buckets between runs, and
    tenant ids come round again in a new test database)."""
    tenant = make_tenant(plan="free", credits=1000)
    if settings.REDIS_URL:
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete(rate_key(tenant.pk))
        client.close()
    return account_for(tenant)


def _burst(method: str, url: str, account: Account, **kwargs) -> list[httpx.Response]:
    with httpx.Client(headers=account.headers, timeout=30) as http:
        return [http.request(method, url, **kwargs) for _ in range(BURST + 1)]


def _assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-limit"] == str(BURST)
    assert response.headers["x-ratelimit-remaining"] == "0"


def test_the_21st_models_list_in_a_row_is_a_rate_limit_error(free_account, server):
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=free_account.key, max_retries=0)
    for _ in range(BURST):
        sdk.models.list()
    with pytest.raises(openai.RateLimitError) as info:
        sdk.models.list()
    assert info.value.code == "rate_limit_exceeded"
    _assert_limited(info.value.response)


def test_admitted_requests_carry_the_rate_limit_headers(free_account, server):
    *admitted, refused = _burst("GET", f"{server.url}/v1/models/demo/cheap", free_account)
    assert [r.status_code for r in admitted] == [200] * BURST
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in admitted]
    assert remaining == list(range(BURST - 1, -1, -1))
    assert {r.headers["x-ratelimit-limit"] for r in admitted} == {str(BURST)}
    _assert_limited(refused)
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}


def test_stream_resume_is_rate_limited_in_the_envelope_with_cors(free_account, server):
    url = f"{server.url}/api/chat/{uuid.uuid4()}/stream"
    *admitted, refused = _burst("GET", url, free_account)
    assert {r.status_code for r in admitted} == {204}
    _assert_limited(refused)
    assert error_body(refused)["code"] == "RATE_LIMITED"
    assert refused.headers["access-control-allow-origin"] == "*"


def test_the_retired_message_endpoint_is_rate_limited_too(free_account, server):
    url = f"{server.url}/api/v1/chat/message"
    *admitted, refused = _burst("POST", url, free_account, json={"message": "hi"})
    assert {r.status_code for r in admitted} == {400}
    assert admitted[0].headers["x-ratelimit-remaining"] == str(BURST - 1)
    _assert_limited(refused)
    assert error_body(refused)["code"] == "RATE_LIMITED"


def test_the_retired_message_endpoint_needs_a_key(server):
    response = httpx.post(
        f"{server.url}/api/v1/chat/message", json={"message": "hi"}, headers={"X-API-Key": "no"}
    )
    assert response.status_code == 403  # the document chat's status for a bad key
    assert error_body(response)["code"] == "UNAUTHORIZED"


def test_a_chat_completion_is_counted_once(free_account, server):
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=free_account.key, max_retries=0)
    for _ in range(BURST):
        sdk.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):
        sdk.models.list()
