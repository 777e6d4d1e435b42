"""The playground page in a real headless Chromium against a live server: a message typed
into the page streams its answer, with the credits, in each wire format."""

import os
import uuid
from decimal import Decimal

import pytest

from tests.chromium import run_script
from tests.factories import make_key, make_tenant
from tests.transports.conftest import demo_reply

pytestmark = pytest.mark.django_db(transaction=True)

FORMATS = ["ws", "aisdk", "regpilot", "docgen", "openai"]


def test_each_format_streams_an_answer_with_its_credits(server):
    tenant = make_tenant(credits=1000)
    key = make_key(tenant)
    nonce = uuid.uuid4().hex[:8]
    results = run_script(
        "playground.mjs",
        BASE_URL=server.url,
        API_KEY=key,
        FORMATS=",".join(FORMATS),
        NONCE=nonce,
        SCREENSHOT_DIR=os.environ.get("SCREENSHOT_DIR", ""),
    )
    by_format = {result["format"]: result for result in results}
    refused = by_format.pop("bad-key")
    tools = by_format.pop("tools")
    assert list(by_format) == FORMATS
    assert refused["refusal"].startswith("UNAUTHORIZED"), refused
    # Tool chunks (here from a canned stream) are read by the AI SDK and shown per call.
    assert tools["status"] == "done" and tools["answer"] == "Found two.", tools
    assert tools["tools"] == [
        'search_knowledge output-available\nargs: {"query":"bikes"}\nresult: 2 sources'
    ], tools

    for name, result in by_format.items():
        said = f"Hello from the {name} playground {nonce}"
        assert result["status"] == "done", result
        assert result["answer"] == demo_reply(said), result
        assert result["tokens"] > 5, result  # the raw events show it streamed, token by token
        expected_model = "demo/frontier" if name == "openai" else "demo/balanced"
        assert result["model"] == expected_model, result
        assert result["verdict"].startswith("Approved"), result

    tenant.refresh_from_db()
    for name in ("ws", "aisdk", "regpilot", "docgen"):  # the formats that report credits
        charged = Decimal(by_format[name]["charged"].replace(",", ""))
        remaining = Decimal(by_format[name]["remaining"].replace(",", ""))
        assert 0 < charged < 1 and 0 < remaining < 1000, by_format[name]
    # The last figure shown is the balance the ledger holds after every answer.
    last = by_format["docgen"]["remaining"].replace(",", "")
    assert Decimal(last) >= tenant.credit_balance

    # The key stays in the tab's session storage: nothing in local storage, no cookie.
    assert all(r["storedKey"] == key and r["localKeys"] == 0 for r in by_format.values())
    assert all(not r["cookies"] for r in by_format.values())
