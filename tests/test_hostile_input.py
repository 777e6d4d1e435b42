"""Hostile input against every endpoint, over the wire, with DEBUG on (as ``make run``)
and off (production): no 5xx, every refusal in the endpoint's own error format, no
traceback logged for a client's mistake, no API key in any log line. Then the same over
a real WebSocket client against ``/ws/chat``.

The endpoints are the API routes (``/api/``, ``/v1/``) of chatproject/urls.py and the
apps' urls, the public schema and docs pages aside; ``test_every_api_route_is_in_the_matrix``
fails when one is added without a row here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from dataclasses import dataclass

import httpx
import pytest
import websockets
from django.urls import URLPattern, URLResolver, get_resolver

from billing.models import Plan, Tenant
from tests.factories import make_chat, make_key, make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

ENVELOPE, DOCGEN, OPENAI = "envelope", "docgen", "openai"
VALIDATION_STATUS = {ENVELOPE: 400, DOCGEN: 422, OPENAI: 400}
RETIRED = "/api/v1/chat/message"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {chat}, {project}, {document}, {user} are filled in per test
    format: str
    body: str | None = None  # a JSON body with @X@ where the hostile value goes


X = "@X@"
SENDER = '{"actionType": "other", "senderId": @X@}'
BODY_ENDPOINTS = [
    Endpoint("POST", "/api/v1/chats/", ENVELOPE, '{"user_id": @X@, "metadata": {"k": @X@}}'),
    Endpoint("POST", "/api/v1/projects", ENVELOPE, '{"external_id": @X@, "name": @X@}'),
    Endpoint(
        "POST", "/api/v1/projects/{project}/documents", ENVELOPE, '{"path": "a.md", "content": @X@}'
    ),
    Endpoint(
        "POST",
        "/api/governor/validate",
        ENVELOPE,
        '{"messages": [{"role": "user", "content": @X@}], "governorMetadata": ' + SENDER + "}",
    ),
    Endpoint(
        "POST",
        "/api/ai/chat",
        ENVELOPE,
        '{"messages": [{"role": "user", "content": @X@}], "governorMetadata": ' + SENDER + "}",
    ),
    Endpoint(
        "POST",
        "/api/ai/chat/complete",
        ENVELOPE,
        '{"messages": [{"role": "user", "content": @X@}]}',
    ),
    Endpoint("POST", "/api/v1/chat/stream", DOCGEN, '{"message": @X@, "metadata": {"k": @X@}}'),
    Endpoint("POST", "/api/v1/chat/generate", DOCGEN, '{"message": @X@, "metadata": {"k": [@X@]}}'),
    Endpoint("POST", "/api/v1/chat/message", DOCGEN, '{"message": @X@}'),
    Endpoint(
        "POST",
        "/api/chat",
        ENVELOPE,
        '{"messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": @X@}]}]}',
    ),
    Endpoint(
        "POST",
        "/v1/chat/completions",
        OPENAI,
        '{"model": "demo", "messages": [{"role": "user", "content": @X@}]}',
    ),
]
URL_ENDPOINTS = [
    Endpoint("GET", "/api/v1/chats/user/{user}", ENVELOPE),
    Endpoint("GET", "/api/v1/chats/{chat}", ENVELOPE),
    Endpoint("DELETE", "/api/v1/chats/{chat}", ENVELOPE),
    Endpoint("GET", "/api/v1/chats/{chat}/messages", ENVELOPE),
    Endpoint("GET", "/api/v1/projects", ENVELOPE),
    Endpoint("GET", "/api/v1/projects/{project}", ENVELOPE),
    Endpoint("DELETE", "/api/v1/projects/{project}", ENVELOPE),
    Endpoint("GET", "/api/v1/projects/{project}/documents", ENVELOPE),
    Endpoint("GET", "/api/v1/projects/{project}/documents/{document}", ENVELOPE),
    Endpoint("DELETE", "/api/v1/projects/{project}/documents/{document}", ENVELOPE),
    Endpoint("GET", "/api/chat/{chat}/stream", ENVELOPE),
    Endpoint("POST", "/api/chat/{chat}/stop", ENVELOPE),
    Endpoint("GET", "/api/ai/chat/streams/{stream}", ENVELOPE),
    Endpoint("DELETE", "/api/ai/chat/streams/{stream}", ENVELOPE),
    Endpoint("GET", "/api/v1/chat/streams/{stream}", DOCGEN),
    Endpoint("GET", "/v1/chat/streams/{stream}", OPENAI),
    Endpoint("GET", "/v1/models", OPENAI),
    Endpoint("GET", "/v1/models/{model}", OPENAI),
]
ENDPOINTS = BODY_ENDPOINTS + URL_ENDPOINTS

# Values that every endpoint must refuse wherever a string goes (raw JSON text).
HOSTILE_VALUES = {
    "nul": b'"a\\u0000b"',
    "nul-alone": b'"\\u0000"',
    "lone-high-surrogate": b'"\\ud800"',
    "lone-low-surrogate": b'"x\\udfff y"',
    "utf8-encoded-surrogate": b'"\xed\xa0\x80"',
    "nested-1000": b"[" * 1_000 + b"]" * 1_000,
    "nested-10000": b"[" * 10_000 + b"]" * 10_000,
    "objects-nested-1000": b'{"a": ' * 1_000 + b"1" + b"}" * 1_000,
    "huge-float": b"1e400",
    "nan": b"NaN",
    "minus-infinity": b"-Infinity",
    "int-2^64": str(2**64).encode(),
    "int-5000-digits": b"9" * 5_000,
}
WHOLE_BODIES = {
    "not-json": (b'{"a": ', 400),
    "array": (b"[]", 400),
    "empty": (b"", 400),
    "invalid-utf8": (b'{"a": "\xff"}', 400),
    "nested-10000": (b"[" * 10_000 + b"]" * 10_000, 400),
    "oversized": (b'{"a": "' + b"a" * 5_000_000 + b'"}', 413),
}
# Number fields of the model options: (endpoint path, field, value).
NUMBER_FIELDS = [
    ("/v1/chat/completions", "temperature", "1e308"),
    ("/v1/chat/completions", "temperature", str(2**64)),
    ("/v1/chat/completions", "max_tokens", str(2**64)),
    ("/v1/chat/completions", "max_tokens", str(2**63)),
    ("/v1/chat/completions", "max_completion_tokens", str(10**30)),
    ("/v1/chat/completions", "n", str(2**64)),
    ("/v1/chat/completions", "max_tokens", "1.5"),
    ("/api/ai/chat", "temperature", "-1e308"),
    ("/api/ai/chat/complete", "temperature", str(2**64)),
]
NUMBER_BASE = {
    "/v1/chat/completions": '{"model": "demo", "messages": [{"role": "user", "content": "hi"}]',
    "/api/ai/chat": '{"messages": [{"role": "user", "content": "hi"}]',
    "/api/ai/chat/complete": '{"messages": [{"role": "user", "content": "hi"}]',
}
# Path parameter values: (raw, escaped in the URL) -> whether it must be VALIDATION_ERROR.
PATH_VALUES = {
    "nul": ("a%00b", True),
    "nul-alone": ("%00", True),
    "encoded-surrogate": ("%ED%A0%80", False),
    "invalid-utf8": ("%FF%FE", False),
    "long": ("x" * 5_000, False),
    "key-shaped": ("sk_live_" + "A" * 32, False),
}
QUERY_VALUES = {
    "offset=2^63": ("offset", str(2**63), True),
    "offset=2^63-1": ("offset", str(2**63 - 1), True),
    "offset=2^64": ("offset", str(2**64), True),
    "offset=10^30": ("offset", str(10**30), True),
    "offset=-1": ("offset", "-1", True),
    "offset=1e400": ("offset", "1e400", True),
    "offset=NaN": ("offset", "NaN", True),
    "limit=2^63": ("limit", str(2**63), True),
    "limit=10^400": ("limit", "1" + "0" * 400, True),
    "order=nul": ("order", "%00", True),
    "nul-elsewhere": ("x", "a%00", True),
}
PAGED = {"/api/v1/chats/user/{user}", "/api/v1/chats/{chat}/messages", "/api/v1/projects"}
PAGED |= {"/api/v1/projects/{project}/documents"}


# --- servers and data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def production_process(live_server_process, tmp_path_factory):
    """A second server like a production deployment: DEBUG off (same test database)."""
    from tests.live import start_server

    server = start_server(
        tmp_path_factory.mktemp("production"),
        DEBUG="false",
        SECRET_KEY="hostile-input-tests-" + uuid.uuid4().hex,
        SECURE_SSL_REDIRECT="false",
        DATABASE_POOL_MIN="1",  # a few connections will do: the PostgreSQL server is shared
        DATABASE_POOL_MAX="5",
    )
    yield server
    server.stop()


# The other servers a test runs against: production (DEBUG off), uvicorn (DEBUG on).
OTHER_SERVERS = {"production": "production_process", "uvicorn": "uvicorn_server_process"}


@pytest.fixture
def live(request, server):
    """The DEBUG server (as ``make run``); tests marked with ``BOTH_MODES`` also run
    against a production one, those marked ``EACH_SERVER`` against uvicorn too."""
    mode = getattr(request, "param", "debug")
    return server if mode == "debug" else request.getfixturevalue(OTHER_SERVERS[mode])


BOTH_MODES = pytest.mark.parametrize("live", ["debug", "production"], indirect=True)
EACH_SERVER = pytest.mark.parametrize("live", ["debug", *OTHER_SERVERS], indirect=True)


@dataclass
class Data:
    tenant: Tenant
    key: str
    chat: str
    project: str
    document: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key, "Content-Type": "application/json"}


@pytest.fixture
def data(live) -> Data:
    from knowledge.services import document_store, project_create

    tenant = make_tenant(credits=1000)
    project = project_create(tenant=tenant, external_id=f"p-{uuid.uuid4().hex[:8]}")
    document, _ = document_store(project=project, path="a.md", content="# A\n\ntext")
    chat = make_chat(tenant)
    return Data(tenant, make_key(tenant), str(chat.pk), project.external_id, str(document.pk))


def url_of(live, endpoint: Endpoint, data: Data, **override: str) -> str:
    values = {
        "chat": data.chat,
        "project": data.project,
        "document": data.document,
        "user": "user123",
        "model": "demo",
        "stream": uuid.uuid4().hex,
        **override,
    }
    return live.url + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], endpoint.path)


# --- what every answer must be ---------------------------------------------------------


def check_format(endpoint: Endpoint, response: httpx.Response) -> dict:
    """A 4xx in ``endpoint``'s own JSON format; returns its error object."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert response.status_code >= 400, (response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    error = response.json()["error"]
    if endpoint.format == OPENAI:
        assert {"message", "type", "param", "code"} <= set(error), error
    else:
        assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    assert response.headers.get("x-request-id")
    return error


def check_validation(
    endpoint: Endpoint, response: httpx.Response, status=None, *, retired_reads: bool = True
) -> None:
    error = check_format(endpoint, response)
    expected = status or VALIDATION_STATUS[endpoint.format]
    if (
        endpoint.path == RETIRED and retired_reads
    ):  # answers any body 400, unread (the retired endpoint)
        expected = 400
    assert response.status_code == expected, (response.status_code, error)
    code = error["code"]
    assert code in ("VALIDATION_ERROR", "validation_error") or endpoint.format == OPENAI, error


class LogWatch:
    """The part of a server's log written while a test ran."""

    def __init__(self, live) -> None:
        self.live, self.start = live, len(live.log())

    def new(self) -> str:
        return self.live.log()[self.start :]

    def assert_no_traceback(self) -> None:
        assert "Traceback" not in self.new(), self.new()[-3000:]


def send(endpoint: Endpoint, url: str, data: Data, body: bytes | None = None) -> httpx.Response:
    return httpx.request(endpoint.method, url, content=body, headers=data.headers, timeout=30)


# --- HTTP -------------------------------------------------------------------------------


def test_every_api_route_is_in_the_matrix():
    def routes(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern)

    def normalise(route: str) -> str:
        route = re.sub(r"\(\?P<\w+>[^)]*\)|<[^>]+>", "{}", route)
        return route.replace("^", "").replace("$", "").replace("/?", "").strip("/")

    exercised = {normalise(re.sub(r"\{\w+\}", "{}", e.path)) for e in ENDPOINTS}
    public = {"api/schema", "api/docs"}
    api = {
        normalise(route)
        for route in routes(get_resolver().url_patterns)
        if route.lstrip("^").startswith(("api/", "v1/"))
    }
    assert api, "no API route found"
    assert api - public - exercised == set()


class Failures:
    """The cases of one matrix row that failed, reported together."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, case: str, check, *args, **kwargs) -> None:
        try:
            check(*args, **kwargs)
        except AssertionError as exc:
            self.found.append(f"{case}: {exc}")

    def assert_none(self) -> None:
        assert not self.found, "\n".join(self.found)


@BOTH_MODES
@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS, ids=lambda e: e.path)
def test_hostile_bodies_are_refused(live, data, endpoint):
    watch, failures = LogWatch(live), Failures()
    url = url_of(live, endpoint, data)
    for value, raw in HOSTILE_VALUES.items():
        body = endpoint.body.encode().replace(X.encode(), raw)
        failures.check(value, check_validation, endpoint, send(endpoint, url, data, body))
    for case, (body, status) in WHOLE_BODIES.items():
        response = send(endpoint, url, data, body)
        failures.check(
            case, check_validation, endpoint, response, status if status == 413 else None
        )
    failures.assert_none()
    watch.assert_no_traceback()


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS, ids=lambda e: e.path)
def test_a_malformed_multipart_body_is_the_endpoints_to_refuse(live, data, endpoint):
    """The body reaches the application as it came, whatever its Content-Type says: not
    parsed by the HTTP server first (Twisted would answer a bare 400 and hang up)."""
    headers = {**data.headers, "Content-Type": "multipart/form-data; boundary=x"}
    url = url_of(live, endpoint, data)
    response = httpx.request(
        endpoint.method, url, content=b"no boundary here", headers=headers, timeout=30
    )
    check_format(endpoint, response)


def test_huge_numbers_in_model_options_are_refused(live, data):
    failures = Failures()
    for path, field, value in NUMBER_FIELDS:
        endpoint = next(e for e in BODY_ENDPOINTS if e.path == path)
        body = f'{NUMBER_BASE[path]}, "{field}": {value}}}'.encode()
        response = send(endpoint, url_of(live, endpoint, data), data, body)
        failures.check(f"{path} {field}={value}", check_validation, endpoint, response)
        failures.check(f"{path} {field} named", check_names, field, response)
    failures.assert_none()


def check_names(field: str, response: httpx.Response) -> None:
    assert field in json.dumps(response.json()), response.text[:300]


def check_path_answer(endpoint: Endpoint, response: httpx.Response, must_refuse: bool) -> None:
    if must_refuse:
        check_validation(endpoint, response, retired_reads=False)
    elif response.status_code >= 400:
        check_format(endpoint, response)
    else:
        assert response.status_code < 300, response.status_code


@pytest.mark.parametrize(
    "endpoint", [e for e in ENDPOINTS if "{" in e.path], ids=lambda e: f"{e.method} {e.path}"
)
def test_hostile_path_parameters(live, data, endpoint):
    watch, failures = LogWatch(live), Failures()
    body = endpoint.body.replace(X, '"ok"').encode() if endpoint.body else None
    for parameter in re.findall(r"\{(\w+)\}", endpoint.path):
        for value, (raw, must_refuse) in PATH_VALUES.items():
            url = url_of(live, endpoint, data, **{parameter: raw})
            response = send(endpoint, url, data, body)
            failures.check(
                f"{parameter}={value}", check_path_answer, endpoint, response, must_refuse
            )
    failures.assert_none()
    watch.assert_no_traceback()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_hostile_query_parameters(live, data, endpoint):
    takes = {"x"}
    if endpoint.method == "GET" and endpoint.path in PAGED:
        takes |= {"offset", "limit"}
    if endpoint.method == "GET" and endpoint.path.endswith("/messages"):
        takes.add("order")
    watch, failures = LogWatch(live), Failures()
    body = endpoint.body.replace(X, '"ok"').encode() if endpoint.body else None
    for value, (name, raw, must_refuse) in QUERY_VALUES.items():
        if name not in takes:
            continue
        response = send(endpoint, f"{url_of(live, endpoint, data)}?{name}={raw}", data, body)
        failures.check(value, check_path_answer, endpoint, response, must_refuse)
    failures.assert_none()
    watch.assert_no_traceback()


@EACH_SERVER
def test_no_api_key_reaches_a_log_line(live, data):
    watch = LogWatch(live)
    fake = "sk_live_" + uuid.uuid4().hex
    for key in (data.key, fake):
        httpx.get(f"{live.url}/api/v1/chats/user/u1?api_key={key}", timeout=10)
        httpx.get(f"{live.url}/api/v1/chats/user/u1?x=1&api%5Fkey={key.replace('_', '%5F')}")
        httpx.get(f"{live.url}/api/v1/chats/user/{key}", headers={"X-API-Key": key})
        httpx.get(f"{live.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        httpx.get(f"{live.url}/v1/nope/{key}?token={key}", headers={"X-API-Key": key})
        httpx.post(
            f"{live.url}/api/governor/validate",
            headers=data.headers,
            json={
                "text": "hello",
                "governorMetadata": {"actionType": "other", "senderId": key},
            },
        )
    log = watch.new()
    assert live.access_logger in log and "api_key=[REDACTED]" in log  # the access log is on
    for key in (data.key, fake):
        assert key not in log
        assert key[8:] not in log  # not even the random part alone


# --- WebSocket --------------------------------------------------------------------------

WS_FRAMES = {
    "nested-1000": "[" * 1_000 + "]" * 1_000,
    "content-nested-10000": '{"content": ' + "[" * 10_000 + "]" * 10_000 + "}",
    "objects-nested-1000": '{"a": ' * 1_000 + "1" + "}" * 1_000,
    "content-nul": '{"content": "a\\u0000b"}',
    "content-surrogate": '{"content": "\\ud800"}',
    "metadata-nul": '{"content": "hi", "governorMetadata": ' + SENDER.replace(X, '"\\u0000"') + "}",
    "client-message-id-nul": '{"content": "hi", "client_message_id": "\\u0000"}',
    "client-message-id-101": '{"content": "hi", "client_message_id": "' + "c" * 101 + '"}',
    "quality-surrogate": '{"content": "hi", "quality": "\\udc00"}',
    "temperature-huge": '{"content": "hi", "temperature": 1e400}',
    "temperature-2^64": '{"content": "hi", "temperature": ' + str(2**64) + "}",
    "nan": '{"content": NaN}',
    "int-5000-digits": '{"content": ' + "9" * 5_000 + "}",
    "not-json": '{"content": ',
    "array": "[]",
}


async def ws_connect(live, key: str, **query: str):
    params = "&".join(f"{k}={v}" for k, v in {"api_key": key, "user_id": "u1", **query}.items())
    ws = await websockets.connect(f"{live.ws_url}/ws/chat?{params}", max_size=None)
    return ws


async def ws_event(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def ws_ready(live, key: str):
    ws = await ws_connect(live, key)
    await ws.send(json.dumps({"type": "ping"}))
    while (await ws_event(ws))["type"] != "pong":  # connection_established, user_created
        pass
    return ws


async def ws_survives(ws) -> None:
    await ws.send(json.dumps({"type": "ping"}))
    assert await ws_event(ws) == {"type": "pong"}


@EACH_SERVER
@pytest.mark.parametrize("frame", list(WS_FRAMES), ids=list(WS_FRAMES))
def test_hostile_websocket_frames_are_validation_errors_and_the_socket_survives(live, data, frame):
    watch = LogWatch(live)

    async def run():
        ws = await ws_ready(live, data.key)
        await ws.send(WS_FRAMES[frame])
        error = await ws_event(ws)
        assert error["type"] == "error" and error["code"] == "VALIDATION_ERROR", error
        await ws.send(b"\xff\xfe not utf-8")  # a binary frame that is not text
        assert (await ws_event(ws))["code"] == "VALIDATION_ERROR"
        await ws_survives(ws)
        await ws.close()

    asyncio.run(run())
    watch.assert_no_traceback()


@EACH_SERVER
def test_a_10_mb_frame_gets_an_error_then_close_1009(live, data):
    async def run():
        ws = await ws_ready(live, data.key)
        # The server answers once the frame's header says how big it is: the close can
        # come while this end is still writing the frame, and end the send.
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send("x" * (10 * 1024 * 1024))
        error = await ws_event(ws)
        assert error["type"] == "error" and error["code"] == "VALIDATION_ERROR"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(run())


def test_hostile_frames_never_lock_a_tenant_out(live, data):
    """Each frame that used to end its consumer without giving the slot back, on a tenant
    allowed two connections: afterwards two connections are still admitted."""
    plan = Plan.objects.create(name=f"two-sockets-{uuid.uuid4().hex[:6]}", ws_max_connections=2)
    Tenant.objects.filter(pk=data.tenant.pk).update(plan=plan)

    async def run():
        for frame in ("nested-1000", "objects-nested-1000", "content-nested-10000") * 2:
            ws = await ws_ready(live, data.key)
            await ws.send(WS_FRAMES[frame])
            assert (await ws_event(ws))["type"] == "error"
            await ws.close()
        first, second = await ws_ready(live, data.key), await ws_ready(live, data.key)
        await ws_survives(first)
        await ws_survives(second)
        await first.close()
        await second.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("query", "close_code"),
    [
        ({"user_id": "a%00b"}, 4400),
        ({"user_id": "%00"}, 4400),
        ({"chat_id": "%00"}, 4004),
        ({"chat_id": "%ED%A0%80"}, 4004),
        ({"api_key": "%00"}, 4001),
        ({"api_key": "%ED%A0%80"}, 4001),
    ],
)
def test_hostile_websocket_query_parameters_close_with_their_code(live, data, query, close_code):
    watch = LogWatch(live)

    async def run():
        ws = await ws_connect(live, data.key, **query)
        error = await ws_event(ws)
        assert error["type"] == "error"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == close_code

    asyncio.run(run())
    watch.assert_no_traceback()
