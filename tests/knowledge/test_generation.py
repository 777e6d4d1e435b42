"""Upload → retrieve → the chunk reaches the provider: the engine against a fake
OpenAI-compatible upstream over real HTTP, which records the requests it receives."""

import pytest

from chatproject.db import db_call
from chats import catalog
from chats.engine import FinishedEvent, GenerationRequest, start_generation
from chats.models import LLMModel
from knowledge.retrieval import build_context
from tests.fakes.upstream import FakeUpstream, expected_text, fake_upstream  # noqa: F401

MODEL = "kb-fake-upstream"
LEDGER = (
    "# Ledger\n\nEvery credit movement is an append-only row in the ledger table; "
    "balances are derived from it, never edited in place."
)


@pytest.fixture
def upstream_model(fake_upstream: FakeUpstream):  # noqa: F811
    LLMModel.objects.create(
        name=MODEL,
        provider="openai_compatible",
        upstream_model="fake-model",
        base_url=fake_upstream.openai_base_url,
        api_key_env="",
    )
    catalog.clear_catalog_cache()
    yield fake_upstream
    catalog.clear_catalog_cache()


@pytest.fixture
def uploaded(api, project):
    """The document, uploaded through the REST API."""
    response = api.post(
        "/api/v1/projects/proj-1/documents",
        {"path": "LEDGER.md", "content": LEDGER, "document_type": "ARCHITECTURE_SPEC"},
        format="json",
    )
    assert response.status_code == 201, response.content
    response = api.post(
        "/api/v1/projects/proj-1/documents",
        {"path": "CANTEEN.md", "content": "The canteen serves soup on Fridays."},
        format="json",
    )
    assert response.status_code == 201, response.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_uploaded_chunk_reaches_the_providers_prompt(tenant, uploaded, upstream_model):
    question = "Write the architecture of the credit ledger."
    ctx = await db_call(
        build_context,
        tenant=tenant,
        project_id="proj-1",
        query=question,
        document_type="ARCHITECTURE_SPEC",
        user_name="Ada",
        existing_documents={"MANIFESTO.md": "# Manifesto\n\nCredits are sacred."},
        budget_tokens=4000,
    )
    generation = await start_generation(
        GenerationRequest(
            tenant,
            messages=[
                {"role": "system", "content": ctx.system_prompt},
                {"role": "user", "content": question},
            ],
            model=MODEL,
            use_cache=False,
        )
    )
    events = [event async for event in generation.events()]

    assert isinstance(events[-1], FinishedEvent)
    assert events[-1].content == expected_text(5)
    sent = upstream_model.requests[-1]["messages"]
    assert sent[0]["role"] == "system"
    assert f"[source: LEDGER.md]\n{LEDGER}" in sent[0]["content"]
    assert "canteen" not in sent[0]["content"]
    assert '<document path="MANIFESTO.md">' in sent[0]["content"]
    assert 'a user named "Ada"' in sent[0]["content"]
    assert sent[-1] == {"role": "user", "content": question}
    assert ctx.document_types_used == ["ARCHITECTURE_SPEC"]
