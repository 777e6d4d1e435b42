"""Full-text search over one project's chunks: PostgreSQL in production, SQLite FTS5
embedded. Both rank chunks for a query and never look outside the given project.

A query is reduced to its words (at most ``MAX_QUERY_TERMS``, stop words dropped) and
matched with OR: a natural-language request ("how are refunds approved?") rarely has
every word in one chunk, which websearch/plain queries (AND) would require. Ranking then
favours chunks with more, rarer and more frequent matches, and matches in the document's
path (weight A on PostgreSQL, a separate BM25 column on SQLite).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.db import connection
from django.db.models import Case, F, FloatField, Q, Value, When
from django.db.models.expressions import Combinable

from knowledge.models import Document, DocumentChunk, Project

MAX_QUERY_TERMS = 32
MAX_TERM_LENGTH = 64

# Words too common to say anything about a chunk (the PostgreSQL configurations drop
# their own lists too; this keeps the term budget for words that matter).
_STOP_WORDS = """a about above after all also am an and any are as at be been being but by can could
    did do does doing for from had has have having he her here hers him his how i if in
    into is it its itself just me more most my no nor not now of off on once only or other
    our ours out over own same she should so some such than that the their theirs them then
    there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours"""
STOP_WORDS = frozenset(_STOP_WORDS.split())

_WORD = re.compile(r"\w+")
_EXTENSION = re.compile(r"\.(md|markdown|txt|rst)$", re.IGNORECASE)


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    score: float  # higher is better; comparable within one search only


class SearchBackend(Protocol):
    def vector(self, *, document: Document, text: str) -> Combinable | None:
        """What a new chunk's ``search_vector`` is stored as (computed by the insert
        itself, so a chunk is written once and searchable in the same transaction)."""

    def search(self, *, project: Project, query: str, limit: int) -> list[Hit]:
        """The project's best chunks for ``query``, best first."""


def query_terms(query: str) -> list[str]:
    """The words of a query worth searching for, lower-cased, unique, in order."""
    terms: list[str] = []
    for word in _WORD.findall(query.lower()):
        if word in STOP_WORDS or len(word) > MAX_TERM_LENGTH or word in terms:
            continue
        terms.append(word)
        if len(terms) == MAX_QUERY_TERMS:
            break
    return terms


def title_words(path: str) -> str:
    """The words of a document's path: ``docs/ARCHITECTURE_SPEC.md`` → ``docs ARCHITECTURE
    SPEC``."""
    return " ".join(re.split(r"[\W_]+", _EXTENSION.sub("", path))).strip()


class PostgresBackend:
    """``tsvector`` per chunk (path weight A, text weight B) under a GIN index, queried
    with ``to_tsquery`` in the document's own configuration and ranked by ``ts_rank``."""

    def vector(self, *, document: Document, text: str) -> Combinable | None:
        config = document.language
        title = title_words(document.path)
        return SearchVector(Value(title), weight="A", config=config) + SearchVector(
            Value(text), weight="B", config=config
        )

    def search(self, *, project: Project, query: str, limit: int) -> list[Hit]:
        terms = query_terms(query)
        if not terms:
            return []
        languages = sorted(
            set(Document.objects.filter(project=project).values_list("language", flat=True))
        )
        if not languages:
            return []
        raw = " | ".join(terms)  # only \w characters: nothing to_tsquery could misread
        chunks = DocumentChunk.objects.filter(project=project)
        rank: SearchRank | Case
        if len(languages) == 1:  # the usual case: no need to look at the documents
            tsquery = SearchQuery(raw, search_type="raw", config=languages[0])
            chunks = chunks.filter(search_vector=tsquery)
            rank = SearchRank(F("search_vector"), tsquery)
        else:
            matches, ranks = Q(), []
            for language in languages:
                # One constant tsquery per configuration, so the GIN index serves each.
                tsquery = SearchQuery(raw, search_type="raw", config=language)
                matches |= Q(document__language=language, search_vector=tsquery)
                rank = SearchRank(F("search_vector"), tsquery)
                ranks.append(When(document__language=language, then=rank))
            chunks = chunks.filter(matches)
            rank = Case(*ranks, default=Value(0.0), output_field=FloatField())
        rows = chunks.annotate(rank=rank).order_by("-rank", "id").values_list("id", "rank")
        return [Hit(chunk_id, float(score)) for chunk_id, score in rows[:limit]]


FTS_TABLE = "knowledge_chunk_fts"

# The table name is spelled out (FTS_TABLE) in these statements.
_SQLITE_INSTALL = [
    """CREATE VIRTUAL TABLE IF NOT EXISTS knowledge_chunk_fts
        USING fts5(title, body, tokenize = 'porter unicode61')""",
    """CREATE TRIGGER IF NOT EXISTS knowledge_chunk_fts_insert
        AFTER INSERT ON knowledge_documentchunk
        BEGIN
            INSERT INTO knowledge_chunk_fts(rowid, title, body) VALUES (
                new.id,
                (SELECT path FROM knowledge_document WHERE id = new.document_id),
                new.text
            );
        END""",
    """CREATE TRIGGER IF NOT EXISTS knowledge_chunk_fts_delete
        AFTER DELETE ON knowledge_documentchunk
        BEGIN
            DELETE FROM knowledge_chunk_fts WHERE rowid = old.id;
        END""",
    """CREATE TRIGGER IF NOT EXISTS knowledge_chunk_fts_update
        AFTER UPDATE OF text ON knowledge_documentchunk
        BEGIN
            UPDATE knowledge_chunk_fts SET body = new.text WHERE rowid = old.id;
        END""",
]


def sqlite_install(schema_editor) -> None:
    """Create the FTS5 table and the triggers that keep it in step with the chunks."""
    for statement in _SQLITE_INSTALL:
        schema_editor.execute(statement)


def sqlite_uninstall(schema_editor) -> None:
    for suffix in ("_insert", "_delete", "_update"):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {FTS_TABLE}{suffix}")
    schema_editor.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")


class SqliteBackend:
    """SQLite FTS5 (Porter stemming, BM25 ranking with the path weighted double).

    Triggers index chunks as they are inserted. BM25's term statistics are those of the
    whole table, so other projects' text nudges the ranking (never the results).
    """

    def vector(self, *, document: Document, text: str) -> Combinable | None:
        return None  # the insert trigger indexes the chunk

    def search(self, *, project: Project, query: str, limit: int) -> list[Hit]:
        terms = query_terms(query)
        if not terms:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)  # quoted: plain strings
        project_id = DocumentChunk._meta.get_field("project").get_db_prep_value(
            project.pk, connection
        )
        sql = """
            SELECT chunk.id, -bm25(knowledge_chunk_fts, 2.0, 1.0) AS score
            FROM knowledge_chunk_fts JOIN knowledge_documentchunk AS chunk
                ON chunk.id = knowledge_chunk_fts.rowid
            WHERE knowledge_chunk_fts MATCH %s AND chunk.project_id = %s
            ORDER BY score DESC, chunk.id
            LIMIT %s
        """
        with connection.cursor() as cursor:
            cursor.execute(sql, [match, project_id, limit])
            return [Hit(chunk_id, float(score)) for chunk_id, score in cursor.fetchall()]


def get_backend() -> SearchBackend:
    """The backend for the default database."""
    if connection.vendor == "postgresql":
        return PostgresBackend()
    if connection.vendor == "sqlite":
        return SqliteBackend()
    raise NotImplementedError(f"No knowledge search for {connection.vendor}.")
