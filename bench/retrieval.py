"""Knowledge-base retrieval benchmark: quality on the evaluation corpus, latency at 10K
chunks. Run by hand, against the database ``DATABASE_URL`` points to (SQLite when unset):

    .venv/bin/python bench/retrieval.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat .venv/bin/python bench/retrieval.py

It works in a throwaway database next to the configured one (``bench_<name>`` on
PostgreSQL, a temporary file on SQLite), created with the migrations and dropped at the
end, so the configured database is never touched.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from bench.support import database_version, with_throwaway_database  # noqa: E402
from billing.models import Plan, Tenant  # noqa: E402
from billing.plans import create_default_plans  # noqa: E402
from knowledge import retrieval, search, selectors, services  # noqa: E402
from knowledge.models import DocumentChunk, DocumentType  # noqa: E402
from knowledge.templates_defaults import create_default_document_types  # noqa: E402
from tests.knowledge import corpus  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ranked_paths(project, query: str, limit: int = 10) -> list[str]:
    hits = search.get_backend().search(project=project, query=query, limit=limit)
    chunks = selectors.chunks_by_id([hit.chunk_id for hit in hits])
    return [chunks[hit.chunk_id].document.path for hit in hits]


def quality(tenant) -> dict[str, float]:
    project = services.project_create(tenant=tenant, external_id="corpus")
    for path, content in corpus.documents().items():
        services.document_store(project=project, path=path, content=content)
    figures = {}
    for k in (1, 3, 5):
        figures[f"recall@{k}"], misses = corpus.recall_at(k, lambda q: ranked_paths(project, q))
        if k == 3:
            figures["misses@3"] = [m.text for m in misses]
    reciprocal = []
    for query in corpus.queries():
        found = list(dict.fromkeys(ranked_paths(project, query.text)))
        rank = next((i for i, p in enumerate(found, 1) if p in query.relevant), None)
        reciprocal.append(1 / rank if rank else 0.0)
    figures["MRR"] = statistics.mean(reciprocal)
    return figures


def synthetic_documents(rng: random.Random, vocabulary: list[str]):
    """Endless Markdown documents of ~25 sections of ~450 tokens (one chunk each)."""
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf-like
    number = 0
    while True:
        sections = []
        for s in range(25):
            words = rng.choices(vocabulary, weights, k=330)
            paragraphs = [" ".join(words[i : i + 110]) + "." for i in range(0, 330, 110)]
            sections.append(f"## Section {s} {words[0]}\n\n" + "\n\n".join(paragraphs))
        yield f"synthetic/doc-{number:05d}.md", "\n\n".join(sections)
        number += 1


def latency(tenant, chunks: int, queries: int, rng: random.Random) -> dict[str, float]:
    project = services.project_create(tenant=tenant, external_id="big")
    text = " ".join(corpus.documents().values()).lower()
    real = sorted(set(re.findall(r"[a-z]{3,}", text)))
    fake = [
        "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))
        for _ in range(5000)
    ]
    vocabulary = real + fake
    rng.shuffle(vocabulary)
    started, documents = time.perf_counter(), 0
    for path, content in synthetic_documents(rng, vocabulary):
        services.document_store(project=project, path=path, content=content)
        documents += 1
        if DocumentChunk.objects.filter(project=project).count() >= chunks:
            break
    ingest = time.perf_counter() - started
    with connection.cursor() as cursor:
        # Fresh planner statistics, as autovacuum gathers them after a bulk load: without
        # them PostgreSQL plans the search for an empty table.
        cursor.execute("ANALYZE")
    stored = DocumentChunk.objects.filter(project=project).count()

    texts = [q.text for q in corpus.queries()]
    texts += [" ".join(rng.sample(real, 3)) for _ in range(queries)]
    texts = texts[:queries]

    def measure(call) -> list[float]:
        for text in texts[:10]:  # warm-up
            call(text)
        timings = []
        for text in texts:
            start = time.perf_counter()
            call(text)
            timings.append((time.perf_counter() - start) * 1000)
        return timings

    backend = search.get_backend()
    searched = measure(lambda q: backend.search(project=project, query=q, limit=10))
    built = measure(
        lambda q: retrieval.build_context(
            tenant=tenant,
            project_id="big",
            query=q,
            document_type="ARCHITECTURE_SPEC",
            user_name="Ada",
            existing_documents={},
            budget_tokens=6000,
        )
    )
    return {
        "chunks": stored,
        "documents": documents,
        "ingest_s": ingest,
        "search_p50": percentile(searched, 0.5),
        "search_p99": percentile(searched, 0.99),
        "build_p50": percentile(built, 0.5),
        "build_p99": percentile(built, 0.99),
        "queries": len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    def run():
        create_default_plans(Plan)
        create_default_document_types(DocumentType)
        tenant = Tenant.objects.create(name="bench", plan=Plan.objects.get(name="enterprise"))
        noise = Tenant.objects.create(name="noise", plan=Plan.objects.get(name="enterprise"))
        rng = random.Random(42)
        return database_version(), quality(tenant), latency(noise, args.chunks, args.queries, rng)

    version, scores, timing = with_throwaway_database(run, prefix="retrieval")
    print(f"database: {connection.vendor} {version}")
    print(
        f"quality ({len(corpus.documents())} documents, {len(corpus.queries())} queries): "
        + ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "misses@3")
    )
    for miss in scores["misses@3"]:
        print(f"  missed at 3: {miss}")
    print(
        f"ingest: {timing['documents']} documents, {timing['chunks']} chunks "
        f"in {timing['ingest_s']:.1f} s ({timing['chunks'] / timing['ingest_s']:.0f} chunks/s)"
    )
    print(
        f"latency over {timing['queries']} queries at {timing['chunks']} chunks: "
        f"search p50 {timing['search_p50']:.1f} ms, p99 {timing['search_p99']:.1f} ms; "
        f"build_context p50 {timing['build_p50']:.1f} ms, p99 {timing['build_p99']:.1f} ms"
    )


if __name__ == "__main__":
    main()
