"""A small evaluation corpus: 24 short documents of a fictional project ("Harbor") and
22 questions, each with the documents that answer it. Used by the retrieval quality test
and by ``bench/retrieval.py``."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Query:
    text: str
    relevant: frozenset[str]


def documents() -> dict[str, str]:
    """path → content of every corpus document."""
    return {path.name: path.read_text() for path in sorted((HERE / "docs").glob("*.md"))}


def queries() -> list[Query]:
    rows = json.loads((HERE / "queries.json").read_text())
    return [Query(row["query"], frozenset(row["relevant"])) for row in rows]


def recall_at(k: int, search: Callable[[str], list[str]]) -> tuple[float, list[Query]]:
    """Mean recall@k over the queries and the queries that found none of theirs.

    ``search`` returns the source paths of the ranked results (one per chunk, so a
    document can repeat); the first ``k`` distinct paths count.
    """
    total, misses = 0.0, []
    for query in queries():
        found = list(dict.fromkeys(search(query.text)))[:k]
        hits = len(query.relevant & set(found))
        total += hits / len(query.relevant)
        if not hits:
            misses.append(query)
    return total / len(queries()), misses
