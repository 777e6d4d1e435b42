"""Server-side tools over the wire: a tenant's HTTP tools (a local fake webhook, reached
with TOOLS_ALLOW_PRIVATE_URLS on a server of their own) and search_knowledge, through
POST /api/chat; excludeTools; billing and the audit record of a tool-using answer."""

import json

import httpx
import pytest

from billing import pricing
from billing.models import LedgerEntry
from chats.models import LLMModel, Message
from chats.providers import estimate_prompt_tokens
from governor.models import AuditRecord
from knowledge import services as knowledge_services
from tests.factories import Account, account_for, make_tenant
from tests.fakes.tool_server import running_tool_server
from tests.transports.conftest import assert_hold_settled, error_body, post_events, unique
from tools.models import HttpTool

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "whsec_test_secret"
STEP_LIMIT = 3


@pytest.fixture(scope="session")
def tools_process(live_server_process, tmp_path_factory):
    """A server whose tenants' tools may call local addresses, with a small step limit."""
    from tests.live import start_server

    server = start_server(
        tmp_path_factory.mktemp("tools"),
        TOOLS_ALLOW_PRIVATE_URLS="true",
        TOOL_MAX_STEPS=str(STEP_LIMIT),
    )
    yield server
    server.stop()


@pytest.fixture
def tools_server(tools_process, server):
    return tools_process


@pytest.fixture
def webhook():
    with running_tool_server(SECRET) as hook:
        yield hook


@pytest.fixture
def tooled(server, webhook) -> Account:
    """A tenant with four HTTP tools on the fake webhook."""
    tenant = make_tenant(credits=1000)
    for name, path, timeout in (
        ("lookup", "/echo", 5),
        ("slow", "/slow", 0.5),
        ("broken", "/fail", 5),
        ("garbled", "/not-json", 5),
        ("leaky", "/leak", 5),
        ("injecting", "/inject", 5),
    ):
        HttpTool.objects.create(
            tenant=tenant,
            name=name,
            description=f"The {name} tool.",
            parameters={"type": "object", "properties": {"order": {"type": "string"}}},
            url=webhook.url + path,
            timeout_seconds=timeout,
            signing_secret=SECRET,
        )
    return account_for(tenant)


def chat(server, account, body: dict) -> list[dict]:
    _, stream = post_events(f"{server.url}/api/chat", body, account.headers)
    assert stream[-1].data == "[DONE]"
    return [event.json() for event in stream[:-1]]


def of_type(chunks, kind: str) -> list[dict]:
    return [chunk for chunk in chunks if chunk["type"] == kind]


def text(chunks) -> str:
    return "".join(chunk["delta"] for chunk in of_type(chunks, "text-delta"))


def test_a_server_tool_runs_signed_and_the_model_answers_from_its_result(
    tools_server, tooled, webhook
):
    ask = unique('Where is my order? [demo:tool=lookup {"order": "A1"}]')
    before = tooled.balance()
    chunks = chat(tools_server, tooled, {"prompt": ask})
    types = [chunk["type"] for chunk in chunks]
    assert types.count("start-step") == types.count("finish-step") == 2
    assert types[:3] == ["start", "start-step", "tool-input-start"]
    first_step = types[: types.index("finish-step")]
    assert first_step[-2:] == ["tool-input-available", "tool-output-available"]
    (start,) = of_type(chunks, "tool-input-start")
    assert start["toolName"] == "lookup" and start["providerExecuted"] is True
    (output,) = of_type(chunks, "tool-output-available")
    assert output["output"] == {"echo": {"order": "A1"}, "signed": True}
    assert text(chunks) == 'The tool lookup returned: {"echo":{"order":"A1"},"signed":true}'
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}

    (call,) = webhook.calls
    assert call["body"] == {
        "tool": "lookup",
        "call_id": start["toolCallId"],
        "arguments": {"order": "A1"},
    }
    assert call["headers"]["x-tool-call-id"] == start["toolCallId"]

    # Stored with the call and its result; both steps charged against one hold.
    chat_id = chunks[0]["messageMetadata"]["chatId"]
    answer = Message.objects.get(chat_id=chat_id, role="assistant")
    assert answer.tool_calls == [
        {
            "id": start["toolCallId"],
            "name": "lookup",
            "arguments": '{"order": "A1"}',
            "output": '{"echo":{"order":"A1"},"signed":true}',
        }
    ]
    hold = LedgerEntry.objects.get(kind=LedgerEntry.Kind.HOLD, tenant=tooled.tenant)
    request_id = hold.reference
    assert_hold_settled(tooled, request_id, before)
    # The hold covers every step the request may take, each reading the prompt at least.
    model = LLMModel.objects.get(name=chunks[0]["messageMetadata"]["model"])
    one_step = pricing.cost(
        input_price_per_1k=model.input_price_per_1k,
        output_price_per_1k=model.output_price_per_1k,
        prompt_tokens=estimate_prompt_tokens([{"content": ask}]),
        completion_tokens=model.max_output_tokens,
    )
    assert -hold.amount >= STEP_LIMIT * one_step
    metadata = of_type(chunks, "message-metadata")[0]["messageMetadata"]
    assert metadata["usage"]["inputTokens"] == answer.prompt_tokens  # both steps' prompts
    record = AuditRecord.objects.get(request_id=request_id)
    assert [(c["name"], c["status"]) for c in record.output_findings["tool_calls"]] == [
        ("lookup", "ok")
    ]


@pytest.mark.parametrize(
    ("tool", "error"),
    [
        ("slow", "The tool did not answer within 0.5 s."),
        ("broken", "The tool answered HTTP 500."),
        ("garbled", "The tool's answer is not valid JSON."),
    ],
)
def test_a_failing_tool_ends_as_tool_output_error_and_the_model_is_told(
    tools_server, tooled, tool, error
):
    chunks = chat(tools_server, tooled, {"prompt": unique(f"[demo:tool={tool}]")})
    (failed,) = of_type(chunks, "tool-output-error")
    assert failed["errorText"] == error
    assert text(chunks) == f"The tool {tool} returned: " + json.dumps({"error": error})
    assert chunks[-1]["finishReason"] == "stop"


def test_exclude_tools_removes_them_and_reports_the_names_it_removed(tools_server, tooled, webhook):
    body = {
        "prompt": unique("[demo:tool=lookup]"),
        "excludeTools": ["lookup", "create_scheduled_actions"],
    }
    chunks = chat(tools_server, tooled, body)
    assert chunks[0]["messageMetadata"]["excludedTools"] == ["lookup"]
    assert of_type(chunks, "message-metadata")[0]["messageMetadata"]["excludedTools"] == ["lookup"]
    # The demo model calls it anyway; the server does not run what it did not offer.
    (failed,) = of_type(chunks, "tool-output-error")
    assert failed["errorText"] == "Unknown tool 'lookup'."
    assert webhook.calls == []


def test_tools_never_call_private_addresses_without_the_operator_setting(server, tooled, webhook):
    chunks = chat(server, tooled, {"prompt": unique("[demo:tool=lookup]")})
    (failed,) = of_type(chunks, "tool-output-error")
    assert "not a public address" in failed["errorText"]
    assert webhook.calls == []


def test_search_knowledge_reads_the_projects_documents(tools_server, account):
    project = knowledge_services.project_create(tenant=account.tenant, external_id="fleet")
    knowledge_services.document_store(
        project=project,
        path="LEDGER.md",
        content="# Ledger\n\nEvery credit movement is an append-only row in the ledger.",
    )
    ask = unique('[demo:tool=search_knowledge {"query": "credit ledger"}]')
    chunks = chat(tools_server, account, {"prompt": ask, "projectId": "fleet"})
    (output,) = of_type(chunks, "tool-output-available")
    assert output["output"]["results"][0]["source"] == "LEDGER.md"
    # Without a project the tool is not offered: no tools, so the model answers in text.
    chunks = chat(tools_server, account, {"prompt": ask})
    assert not [chunk for chunk in chunks if chunk["type"].startswith("tool-")]
    assert text(chunks).startswith("This is the offline demo model.")


def test_the_governor_withholds_a_tool_result_carrying_a_secret(tools_server, tooled):
    chunks = chat(tools_server, tooled, {"prompt": unique("[demo:tool=leaky]")})
    (failed,) = of_type(chunks, "tool-output-error")
    assert failed["errorText"].startswith(
        "The compliance governor withheld this tool call's result"
    )
    assert "sk-ant" not in text(chunks)


def test_the_governor_withholds_a_tool_result_that_instructs_the_model(tools_server, tooled):
    chunks = chat(tools_server, tooled, {"prompt": unique("[demo:tool=injecting]")})
    (failed,) = of_type(chunks, "tool-output-error")
    assert failed["errorText"] == (
        "The compliance governor withheld this tool call's result (prompt_injection)."
    )
    assert "Ignore all previous" not in text(chunks)
    chat_id = chunks[0]["messageMetadata"]["chatId"]
    request_id = LedgerEntry.objects.get(kind=LedgerEntry.Kind.HOLD, tenant=tooled.tenant).reference
    findings = AuditRecord.objects.get(request_id=request_id).output_findings
    assert findings["tool_results"][0]["rule"] == "prompt_injection"
    assert findings["tool_calls"][0]["status"] == "error"
    assert Message.objects.get(chat_id=chat_id, role="assistant").tool_calls[0]["error"]


def test_bad_tools_are_refused_in_the_ai_sdk_format(server, account):
    response = httpx.post(
        f"{server.url}/api/chat",
        json={"prompt": "hi", "tools": [{"type": "function", "function": {"name": "a b"}}]},
        headers=account.headers,
        timeout=30,
    )
    assert response.status_code == 400
    assert "tools[0].function.name" in error_body(response)["details"]


def test_the_document_chat_may_search_the_project_itself(server, account):
    project = knowledge_services.project_create(tenant=account.tenant, external_id="docs")
    knowledge_services.document_store(
        project=project, path="BILLING.md", content="# Billing\n\nInvoices go out monthly."
    )
    body = {
        "message": unique('[demo:tool=search_knowledge {"query": "invoices"}] Draft it.'),
        "project_id": "docs",
    }
    _, stream = post_events(f"{server.url}/api/v1/chat/stream", body, account.headers)
    assert [event.event for event in stream][-1] == "done"
    done = stream[-1].json()
    assert done["full_response"].startswith("The tool search_knowledge returned:")
    assert "Invoices go out monthly." in done["full_response"]
