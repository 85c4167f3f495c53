"""Hybrid knowledge retrieval: vectors for every chunk from the LLM simulator's
`/v1/embeddings` (real HTTP through the `openai` client, `inference.embeddings`), stored and
deleted with the chunks in the same SQLite file, an embedding cache that makes a restart, a
replay or a re-sent document free, reciprocal-rank fusion, tenant isolation of the vector
path, and the endpoint down at ingest (lexical at once, backfilled later) and at query
(lexical only, counted). No mocks."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from config.models import (
    ConfigError,
    EmbeddingsConfig,
    KnowledgeConfig,
    Settings,
    check_production,
)
from core.records import RawRecord
from inference.embeddings import EmbeddingsClient
from llmsim import LLMSimulator
from state.knowledge import (
    FORMAT,
    EmbeddingsUnavailable,
    Hit,
    KnowledgeFormatMismatch,
    KnowledgeUpdate,
    RetrievalSettings,
    SqliteKnowledgeIndex,
    apply_records,
    rrf_fuse,
)

FAST = RetrievalSettings(embed_retry_s=0.05, embed_retry_max_s=0.2)

ROUTER = "Hold the reset button of the router for ten seconds until the lights blink."
INVOICE = "Invoices are sent by mail on the first day of each month; refunds take a week."
LONG = " ".join(f"Pump {i} needs fresh coolant and a pressure valve check." for i in range(200))

ADVERSARIAL = ["a/b", "../x", 'a"b', "a'b", "OR", "*", "%", "_", " x", "\u200b", "t" * 500,
               "tenant-ü-日本", "acme", "ACME"]  # fmt: skip


def ids(hits: list[Hit]) -> list[str]:
    return [h.doc_id for h in hits]


def doc(
    doc_id: str, version: int, text: str, *, tenant: str = "acme", **kw: Any
) -> KnowledgeUpdate:
    return KnowledgeUpdate(tenant, doc_id, version, kw.pop("title", ""), text, **kw)


def record(offset: int, **body: Any) -> RawRecord:
    return RawRecord("knowledge", 0, offset, None, json.dumps(body).encode(), "")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def sim(llm_sim_factory: Callable[..., LLMSimulator]) -> LLMSimulator:
    return llm_sim_factory(latency_ms=1)


@pytest.fixture
def embedder_factory(sim: LLMSimulator) -> Iterator[Callable[..., EmbeddingsClient]]:
    made: list[EmbeddingsClient] = []

    def make(**changes: Any) -> EmbeddingsClient:
        fields: dict[str, Any] = {
            "base_url": sim.base_url,
            "model": "sim-embed",
            "timeout_s": 2.0,
            "max_attempts": 2,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            **changes,
        }
        client = EmbeddingsClient(EmbeddingsConfig(**fields))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def open_index(
    tmp_path: Path, embedder_factory: Callable[..., EmbeddingsClient]
) -> Iterator[Callable[..., SqliteKnowledgeIndex]]:
    opened: list[SqliteKnowledgeIndex] = []

    def make(
        name: str = "knowledge.sqlite", settings: RetrievalSettings = FAST, **emb: Any
    ) -> SqliteKnowledgeIndex:
        index = SqliteKnowledgeIndex(tmp_path / name, settings, embedder=embedder_factory(**emb))
        opened.append(index)
        return index

    yield make
    for index in opened:
        index.close()


def embedded_texts(sim: LLMSimulator) -> list[str]:
    return [t for e in sim.requests("embeddings") if e["status"] == 200 for t in e["inputs"]]


def table(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


# --- fusion -------------------------------------------------------------------------------


def test_rrf_fuse_sums_reciprocal_ranks() -> None:
    fused = rrf_fuse([["a", "b", "c"], ["c", "d"]], k=60)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["d"] == pytest.approx(1 / 62)
    assert [k for k, _ in fused] == ["c", "a", "b", "d"]  # b and d tie (1/62): by key
    assert rrf_fuse([["x", "y"], ["y", "x"]], k=1) == [("x", 1 / 2 + 1 / 3), ("y", 1 / 2 + 1 / 3)]
    assert rrf_fuse([], k=60) == [] and rrf_fuse([[], []]) == []


# --- vectors with their chunks ------------------------------------------------------------


def test_vectors_are_written_and_deleted_with_their_chunks(
    open_index: Callable[..., SqliteKnowledgeIndex], sim: LLMSimulator
) -> None:
    index = open_index()
    index.apply([doc("router", 1, ROUTER, title="Router"), doc("pumps", 1, LONG)])
    chunk_ids = {r[0] for r in table(index.path, "SELECT id FROM chunks")}
    assert len(chunk_ids) > 2  # the long document has several chunks
    rows = table(index.path, "SELECT id, model, length(vec) FROM vectors")
    assert {r[0] for r in rows} == chunk_ids
    assert {(r[1], r[2]) for r in rows} == {("sim-embed", 256 * 4)}
    assert index.pending_vectors() == 0
    assert "Router\n" + ROUTER in embedded_texts(sim)  # title and text embedded together

    index.apply([doc("pumps", 2, "Pumps were replaced by fans.")])  # a new version
    index.apply([KnowledgeUpdate("acme", "router", 2, deleted=True)])
    chunk_ids = {r[0] for r in table(index.path, "SELECT id FROM chunks")}
    assert len(chunk_ids) == 1
    assert {r[0] for r in table(index.path, "SELECT id FROM vectors")} == chunk_ids
    assert ids(index.search("acme", "pumps fans")) == ["pumps"]
    assert index.search("acme", "router reset") == []


def test_hybrid_search_fuses_both_rankings(
    open_index: Callable[..., SqliteKnowledgeIndex], tmp_path: Path
) -> None:
    updates = [
        doc("router", 1, ROUTER, title="Router"),
        doc("invoice", 1, INVOICE, title="Billing", tags=("billing",)),
        doc("pumps", 1, LONG),
    ]
    hybrid = open_index()
    hybrid.apply(updates)
    lexical = SqliteKnowledgeIndex(tmp_path / "lexical.sqlite", FAST)
    lexical.apply(updates)
    try:
        hits = hybrid.search("acme", "how do I reset my router?", top_k=3)
        assert ids(hits)[0] == "router" == ids(lexical.search("acme", "reset router"))[0]
        assert 0 < hits[0].score <= 2 / (FAST.rrf_k + 1)  # a fused score
        assert hits[0].chunk_id == "router#0" and hits[0].text == ROUTER
        assert ids(hybrid.search("acme", "refunds", tags=["billing"])) == ["invoice"]
        assert hybrid.search("acme", "router", tags=["billing"]) == []
        # min_score filters the lexical candidates only: what is left came by its vector
        strict = hybrid.search("acme", "router", min_score=1e9)
        assert ids(strict) == ["router"] and strict[0].score == pytest.approx(1 / 61)
    finally:
        lexical.close()


# --- the embedding cache ------------------------------------------------------------------


def test_restart_replay_and_resent_documents_embed_nothing_again(
    open_index: Callable[..., SqliteKnowledgeIndex], sim: LLMSimulator
) -> None:
    """The index is filled from a topic and searched; the process restarts (new index handle,
    new client) and the topic is read again from 0 (a replay), an unchanged document is
    re-sent with a new version, a deleted one comes back with its old text, and the same
    question is asked again: the simulator sees no second embedding request for any text."""
    records = [
        record(0, tenant="acme", doc_id="router", version=1, title="Router", text=ROUTER),
        record(1, tenant="acme", doc_id="invoice", version=1, text=INVOICE),
        record(2, tenant="acme", doc_id="pumps", version=1, text=LONG),
    ]
    index = open_index()
    assert apply_records(index, records) == (3, [])
    assert ids(index.search("acme", "reset the router"))[0] == "router"
    first = embedded_texts(sim)
    assert len(first) == len(set(first)) > 3 and index.pending_vectors() == 0
    index.close()

    again = open_index()
    assert apply_records(again, records) == (0, [])  # a replay: skipped by the positions
    assert apply_records(
        again,
        [
            record(3, tenant="acme", doc_id="router", version=2, title="Router", text=ROUTER),
            record(4, tenant="acme", doc_id="invoice", version=2, deleted=True),
            record(5, tenant="acme", doc_id="invoice", version=3, text=INVOICE),
        ],
    ) == (3, [])
    assert ids(again.search("acme", "reset the router"))[0] == "router"  # a cached query
    assert embedded_texts(sim) == first
    assert again.pending_vectors() == 0
    assert len(table(again.path, "SELECT id FROM vectors")) == len(
        table(again.path, "SELECT id FROM chunks")
    )
    again.search("acme", "monthly invoices")  # a new question: one text more
    assert embedded_texts(sim) == [*first, "monthly invoices"]


# --- tenancy ------------------------------------------------------------------------------


def test_vector_path_is_strictly_tenant_scoped(
    open_index: Callable[..., SqliteKnowledgeIndex],
) -> None:
    index = open_index()
    # every tenant holds the same words: only the tenant scoping tells the vectors apart
    index.apply([doc(f"{t}-doc", 1, f"shared reactor manual {t}", tenant=t) for t in ADVERSARIAL])
    for t in ADVERSARIAL:
        hits = index.search(t, "shared reactor manual", top_k=50)
        assert ids(hits) == [f"{t}-doc"], t
    for missing in ["", "a%", "acm", "acme ", "Acme", "t" * 499]:
        assert index.search(missing, "shared reactor manual", top_k=50) == [], missing


# --- the endpoint down --------------------------------------------------------------------


def test_endpoint_down_at_ingest_indexes_lexically_then_backfills(
    open_index: Callable[..., SqliteKnowledgeIndex], sim: LLMSimulator
) -> None:
    """The endpoint is down when documents arrive: they are searchable lexically at once
    (apply neither blocks nor loses them), a later apply sends no request while the backfill
    waits, and once the endpoint answers every chunk gets its vector."""
    failures = sample("contextstream_knowledge_embedding_failures_total", stage="ingest")
    sim.configure(down=True)
    index = open_index()
    started = time.monotonic()
    index.apply([doc("router", 1, ROUTER), doc("pumps", 1, LONG)])
    assert time.monotonic() - started < 2
    assert ids(index.search("acme", "router reset")) == ["router"]
    assert index.pending_vectors() > 1
    assert sample("contextstream_knowledge_embedding_failures_total", stage="ingest") > failures
    index.apply([doc("invoice", 1, INVOICE)])
    assert ids(index.search("acme", "invoices refunds")) == ["invoice"]

    sim.configure(down=False)
    wait_for(lambda: index.pending_vectors() == 0)
    assert len(table(index.path, "SELECT id FROM vectors")) == len(
        table(index.path, "SELECT id FROM chunks")
    )
    texts = embedded_texts(sim)
    assert ROUTER in texts and INVOICE in texts


def test_pending_chunks_are_embedded_after_a_restart(
    open_index: Callable[..., SqliteKnowledgeIndex], sim: LLMSimulator
) -> None:
    sim.configure(down=True)
    index = open_index(settings=RetrievalSettings(embed_retry_s=30, embed_retry_max_s=30))
    index.apply([doc("router", 1, ROUTER)])
    assert index.pending_vectors() == 1
    index.close()  # the process stops before the backfill got through
    sim.configure(down=False)
    again = open_index()
    wait_for(lambda: again.pending_vectors() == 0)
    assert embedded_texts(sim) == [ROUTER]


def test_endpoint_down_at_query_is_lexical_only_and_counted(
    open_index: Callable[..., SqliteKnowledgeIndex], sim: LLMSimulator, tmp_path: Path
) -> None:
    updates = [doc("router", 1, ROUTER), doc("invoice", 1, INVOICE), doc("pumps", 1, LONG)]
    index = open_index(settings=RetrievalSettings(embed_retry_s=30, embed_retry_max_s=30))
    index.apply(updates)
    cached = index.search("acme", "router reset lights")  # its vector is cached now
    lexical = SqliteKnowledgeIndex(tmp_path / "lexical.sqlite")
    lexical.apply(updates)
    only = sample("contextstream_knowledge_lexical_only_searches_total")
    failed = sample("contextstream_knowledge_embedding_failures_total", stage="query")
    sim.configure(down=True)
    try:
        seen = len(sim.requests("embeddings"))
        hits = index.search("acme", "pressure valve coolant")
        assert hits == lexical.search("acme", "pressure valve coolant")  # bm25 scores
        assert len(sim.requests("embeddings")) == seen + 1  # one attempt, no retries
        assert index.search("acme", "monthly refunds") == lexical.search("acme", "monthly refunds")
        assert len(sim.requests("embeddings")) == seen + 1  # backed off: not asked again
        assert sample("contextstream_knowledge_lexical_only_searches_total") == only + 2
        assert sample("contextstream_knowledge_embedding_failures_total", stage="query") == (
            failed + 1
        )
        assert index.search("acme", "router reset lights") == cached  # still hybrid
    finally:
        lexical.close()


# --- format -------------------------------------------------------------------------------


def test_v1_files_are_upgraded_in_place_and_newer_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    SqliteKnowledgeIndex(path).close()
    with sqlite3.connect(path) as conn:  # what knowledge-v1 wrote: no vector tables
        conn.execute("DROP TABLE vectors")
        conn.execute("DROP TABLE embedding_cache")
        conn.execute("DROP TABLE vector_gen")
        conn.execute("UPDATE meta SET value = 'knowledge-v1' WHERE key = 'format'")
    v1 = SqliteKnowledgeIndex(path)
    v1.apply([doc("router", 1, ROUTER)])
    assert ids(v1.search("acme", "router")) == ["router"]
    v1.close()
    assert table(path, "SELECT value FROM meta WHERE key = 'format'") == [(FORMAT,)]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 'knowledge-v3' WHERE key = 'format'")
    with pytest.raises(KnowledgeFormatMismatch, match=r"knowledge-v3.*move the file aside"):
        SqliteKnowledgeIndex(path)


# --- the client and its config ------------------------------------------------------------


def test_client_batches_retries_and_names_failures(
    embedder_factory: Callable[..., EmbeddingsClient], sim: LLMSimulator
) -> None:
    client = embedder_factory(batch_size=2, dimensions=64, max_attempts=3)
    assert client.key == "sim-embed@64"
    vecs = client.embed(["a b", "c", "d", "e", "f"])
    assert [len(v) for v in vecs] == [64] * 5
    assert [len(e["inputs"]) for e in sim.requests("embeddings")] == [2, 2, 1]
    sim.configure(fail_next=2)
    assert len(client.embed(["g"])) == 1  # two 500s retried
    sim.configure(down=True)
    with pytest.raises(EmbeddingsUnavailable, match=r"after 3 attempt\(s\): 503"):
        client.embed(["h"])
    with pytest.raises(EmbeddingsUnavailable, match=r"after 1 attempt"):
        client.embed(["h"], attempts=1)
    sim.configure(down=False)
    with pytest.raises(EmbeddingsUnavailable, match=r"refused the request \(400\)"):
        embedder_factory(dimensions=5000).embed(["x"])  # the simulator's limit is 4096
    sim.stop()
    with pytest.raises(EmbeddingsUnavailable, match="connection error"):
        client.embed(["x"])


def test_config_reads_the_key_from_the_environment_and_masks_it(
    monkeypatch: pytest.MonkeyPatch, embedder_factory: Callable[..., EmbeddingsClient]
) -> None:
    monkeypatch.setenv("EMBED_KEY", "sk-very-secret")
    cfg = KnowledgeConfig.model_validate(
        {
            "embeddings": {
                "base_url": "http://127.0.0.1:1/v1",
                "model": "m",
                "api_key_env": "EMBED_KEY",
            }
        }
    )
    assert cfg.embeddings is not None
    assert cfg.embeddings.api_key().get_secret_value() == "sk-very-secret"
    assert (cfg.embeddings.rrf_k, cfg.embeddings.vector_candidates) == (60, 100)
    client = embedder_factory(api_key_env="EMBED_KEY")
    assert "sk-very-secret" not in repr(client) + repr(cfg) + str(cfg)
    with pytest.raises(ValueError, match="extra"):
        KnowledgeConfig.model_validate({"embeddings": {"base_url": "u", "model": "m", "key": "x"}})


def test_vectors_in_memory_follow_every_change(
    open_index: Callable[..., SqliteKnowledgeIndex], tmp_path: Path
) -> None:
    """A searcher keeps the tenant's vectors in memory; documents added, replaced and deleted
    afterwards (by this handle or by another one on the same file, as another process would)
    are what its next vector ranking sees. `min_score` shuts the lexical side out."""
    index = open_index()
    index.apply([doc("router", 1, ROUTER)])

    def by_vector(query: str) -> list[str]:
        return ids(index.search("acme", query, top_k=10, min_score=1e9))

    assert by_vector("router reset") == ["router"]
    index.apply([doc("invoice", 1, INVOICE)])
    assert by_vector("monthly invoices refunds") == ["invoice"]
    other = open_index()  # the same file
    other.apply([doc("pumps", 1, "Coolant pumps and valves.")])
    other.apply([KnowledgeUpdate("acme", "invoice", 2, deleted=True)])
    assert by_vector("coolant pumps") == ["pumps"]
    assert by_vector("monthly invoices refunds") == []


def test_production_refuses_a_placeholder_embeddings_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-looking-key")
    monkeypatch.setenv("EMBED_KEY", "changeme")
    raw = {
        "app": {"profile": "production"},
        "input": {"kind": "file", "sources": [{"name": "chat", "path": "in.jsonl"}]},
        "knowledge": {"embeddings": {"base_url": "u", "model": "m", "api_key_env": "EMBED_KEY"}},
    }
    with pytest.raises(ConfigError, match=r"EMBED_KEY \(knowledge\.embeddings\) is unset"):
        check_production(Settings.model_validate(raw))
    monkeypatch.setenv("EMBED_KEY", "sk-another-real-key")
    check_production(Settings.model_validate(raw))


def test_pipeline_knowledge_table_wires_the_embeddings(sim: LLMSimulator, tmp_path: Path) -> None:
    """`flows.pipeline.knowledge_table` with `[knowledge.embeddings]`: the knowledge file read
    at bootstrap is embedded through the configured endpoint, and the process's index (the
    one the enrich step opens) searches hybrid; a second bootstrap embeds nothing."""
    from connectors.reference import (
        close_knowledge,
        close_references,
        ensure_reference,
        open_knowledge,
    )
    from flows.pipeline import knowledge_table

    docs = tmp_path / "knowledge.jsonl"
    docs.write_text(
        json.dumps({"tenant": "acme", "doc_id": "router", "version": 1, "text": ROUTER}) + "\n"
    )
    raw = {
        "input": {
            "kind": "file",
            "sources": [{"name": "chat", "path": str(tmp_path / "in.jsonl")}],
            "knowledge": {"name": "knowledge", "path": str(docs)},
        },
        "stores": {"dir": str(tmp_path / "stores")},
        "knowledge": {"embeddings": {"base_url": sim.base_url, "model": "sim-embed", "rrf_k": 10}},
    }
    settings = Settings.model_validate(raw)
    try:
        table = knowledge_table(settings)
        assert table is not None
        ensure_reference(table)
        index = open_knowledge(table.store_path)
        assert index.embedder is not None and index.settings.rrf_k == 10
        assert index.pending_vectors() == 0 and embedded_texts(sim) == [ROUTER]
        hits = index.search("acme", "reset router", min_score=1e9)  # the vector side alone
        assert ids(hits) == ["router"] and hits[0].score == pytest.approx(1 / 11)
    finally:
        close_references()
        close_knowledge()
    again = knowledge_table(settings)
    assert again is not None
    try:
        ensure_reference(again)
    finally:
        close_references()
        close_knowledge()
    assert embedded_texts(sim) == [ROUTER, "reset router"]
