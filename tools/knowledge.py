"""``search_knowledge``: the model searches the project's knowledge base itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from billing.models import Tenant
from chatproject.db import db_call
from chats.providers import ToolSpec
from chats.tool_loop import ToolError
from knowledge.retrieval import RetrievalError, search_knowledge

SPEC = ToolSpec(
    name="search_knowledge",
    description="Search the project's documents; returns the passages that best match.",
    parameters={
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What to look for."}},
        "required": ["query"],
    },
)
RESULTS = 5


@dataclass(frozen=True)
class SearchKnowledgeTool:
    tenant: Tenant
    project_id: str
    spec: ToolSpec = SPEC

    async def run(self, arguments: dict[str, Any], *, call_id: str) -> str:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolError("query must be a non-empty string.")
        try:
            excerpts = await db_call(
                search_knowledge,
                tenant=self.tenant,
                project_id=self.project_id,
                query=query,
                limit=RESULTS,
            )
        except RetrievalError:
            raise ToolError("The knowledge base could not be searched.") from None
        results = [
            {"source": e.source, "document_type": e.document_type, "text": e.text} for e in excerpts
        ]
        return json.dumps({"results": results}, ensure_ascii=False, separators=(",", ":"))
