"""The ContextStream dataflow: one list of named steps, as drawn in DESIGN.md.

    ingest ─▶ decode ─┬─▶ dead letters
                      ▼
                   redact ─▶ key ─▶ dedup ─▶ anomaly ─┬─▶ alerts ─▶ explain work
                                                      ▼
                                ledger ◀── events ─▶ memory ─▶ work ─▶ profiles ─▶ llm
    profiles_in ─▶ profile_errors ─▶ dead letters          responses, audit, dead letters
    (each process: seed + whole profiles input ─▶ its profile store, read to the end first)
    erasures_in ─▶ erasures ─┬─▶ dead letters
                             └─▶ (keyed by subject) memory ─▶ erasure_done ─▶ audit
    (each process: whole erasures input ─▶ its erasure table ─▶ its stores, read first)

Run it with `python -m bytewax.run "flows.pipeline:build('config/kafka-dev.toml')" -r DIR -s
10 -b 60`, or through `run.py`.

The step ids below are part of the recovery format (a renamed step orphans its state): the
recovery step ids are recorded in `flows/step_ids.txt`, and `tests/flows/test_step_ids.py`
fails when the built flow differs from that record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource
from bytewax.operators import BranchOut
from bytewax.outputs import DynamicSink

from config.models import ConfigError, EmbeddingsConfig, Settings, SourceConfig, load_config
from connectors.files import JsonlFileSink, JsonlFileSource, file_map
from connectors.kafka_sink import ReliableKafkaSink
from connectors.kafka_source import KafkaUnavailable, RawKafkaSource
from connectors.kafkatool import preflight
from connectors.reference import (
    ErasureTable,
    KnowledgeTable,
    ReferenceBootstrapError,
    ReferenceTable,
    ensure_reference,
    open_knowledge,
    parse_profile,
)
from core.activity import activity_record
from core.clock import Clock
from core.records import (
    KV,
    Audit,
    DeadLetter,
    Event,
    Kind,
    LedgerEntry,
    RawRecord,
    Response,
    coords,
)
from inference.client import LLMExecutor, shared_executor
from inference.embeddings import shared_embeddings
from operators.anomaly import detect_anomalies
from operators.dedup import dedup
from operators.enrich import attach_knowledge, attach_profiles
from operators.erasure import complete_erasures, parse_erasures
from operators.llm import call_llm
from operators.memory import Remembered, remember, remember_erasing
from operators.publish import (
    alert_kv,
    audit_kv,
    dead_letter_kv,
    ledger_batch_kv,
    publish,
    publish_batches,
    response_kv,
)
from operators.redact import RegexRedactor, redact
from operators.route import Router, route
from operators.validate import decode_validate
from runtime import backpressure, metrics
from runtime.process import process_position, setup_process, start_progress, tune_gc
from runtime.run_audit import RunAudit
from state.budgets import shared_budgets
from state.knowledge import RetrievalSettings, SqliteKnowledgeIndex, parse_document
from state.recovery import check_recovery_directory, recovery_directory_argument
from state.stores import ResponseCache, StoreError, StoreLayout

log = logging.getLogger("contextstream.pipeline")

FLOW_ID = "contextstream"

OUTPUT_STALL_TIMEOUT_S = 600.0
"""How long output writes wait for a stalled broker (re-producing timed-out messages) before
the run fails; see `connectors.kafka_sink`."""


def _source(settings: Settings) -> FixedPartitionedSource[RawRecord, object]:
    inp = settings.input
    if inp.kind == "file":
        return JsonlFileSource(  # type: ignore[return-value]
            file_map((s.path, s.name) for s in inp.sources if s.path),
            batch_size=settings.kafka.batch_size,
        )
    return RawKafkaSource(  # type: ignore[return-value]
        {s.topic: s.name for s in inp.sources if s.topic},
        settings.kafka.client_settings(),
        tail=inp.tail,
        batch_size=settings.kafka.batch_size,
        queued_max_kbytes=settings.kafka.queued_max_messages_kbytes,
    )


def _sink(settings: Settings, name: str, topic: str) -> DynamicSink[KV]:
    out = settings.output
    if out.kind == "file":
        return JsonlFileSink(out.dir, name)
    conf = settings.kafka.client_settings()
    conf["message.max.bytes"] = str(settings.kafka.message_max_bytes)
    conf["delivery.timeout.ms"] = str(settings.kafka.delivery_timeout_ms)
    return ReliableKafkaSink(topic, conf, stall_timeout_s=OUTPUT_STALL_TIMEOUT_S)


def bounded_dead_letter_kv(max_raw: int) -> Callable[[DeadLetter], KV]:
    """`dead_letter_kv`, but a dead letter whose raw bytes exceed `max_raw` (the records
    rejected for size) carries only their first `max_raw` bytes, with `raw_size`,
    `raw_sha256` and `raw_truncated` in `detail`.

    A 1 MB invalid record would otherwise make a dead letter over the producer's
    `message.max.bytes` and fail the run on every restart; the full record stays at its
    source coordinates.
    """

    def to_kv(dl: DeadLetter) -> KV:
        raw = dl.raw
        if raw is not None and len(raw) > max_raw:
            detail = {
                **dl.detail,
                "raw_truncated": True,
                "raw_size": len(raw),
                "raw_sha256": hashlib.sha256(raw).hexdigest(),
            }
            dl = dataclasses.replace(dl, raw=raw[:max_raw], detail=detail)
        return dead_letter_kv(dl)

    return to_kv


def tenant_refusal(dl: DeadLetter, now: float) -> Audit | None:
    """The `tenant_refused` activity record of a dead letter refusing a record's tenant."""
    claimed = dl.detail.get("refused_tenant")
    if claimed is None:
        return None
    return activity_record(
        "tenant_refused",
        about=(dl.source,),
        tenant=claimed,
        at=now,
        source=dl.detail["source_name"],
        coordinates=dl.source,
        event_id=dl.event_id,
        allowed=dl.detail["allowed"],
    )


def _count_invalid(dl: DeadLetter) -> DeadLetter:
    metrics.EVENTS_INVALID.inc()
    return dl


def _late_letter(event: Event) -> DeadLetter:
    metrics.EVENTS_LATE.inc()
    return DeadLetter(
        step_id="anomaly",
        reason="event arrived after its rate window closed (anomaly.allowed_lateness_s)",
        source=event.source,
        event_id=event.event_id,
        tenant=event.tenant,
    )


def _count_late(event: Event) -> Event:
    metrics.EVENTS_LATE.inc()
    return event


def _duplicate_entry(event: Event) -> LedgerEntry:
    return LedgerEntry(
        event.event_id, event.tenant, event.kind.value, event.entity, "duplicate", event.source
    )


def _count_only(batch: list[LedgerEntry]) -> list[None]:
    ledger_batch_kv(batch)  # counts the events; the ledger output itself is disabled
    return []


def _profile_dead_letter(raw: RawRecord) -> DeadLetter | None:
    parsed = parse_profile(raw)
    if isinstance(parsed, tuple):
        return None
    return DeadLetter(
        step_id="profiles_in",
        reason=parsed,
        source=coords(raw.origin, raw.partition, raw.offset),
        raw=raw.value,
    )


def _document_dead_letter(raw: RawRecord, max_doc_bytes: int) -> DeadLetter | None:
    parsed = parse_document(raw.value, max_doc_bytes=max_doc_bytes)
    if not isinstance(parsed, str):
        return None
    return DeadLetter(
        step_id="knowledge_in",
        reason=parsed,
        source=coords(raw.origin, raw.partition, raw.offset),
        raw=raw.value,
    )


def _reference_source(
    settings: Settings, src: SourceConfig
) -> FixedPartitionedSource[RawRecord, object]:
    if settings.input.kind == "file":
        assert src.path is not None
        return JsonlFileSource(file_map([(src.path, src.name)]))  # type: ignore[return-value]
    assert src.topic is not None
    return RawKafkaSource(  # type: ignore[return-value]
        {src.topic: src.name}, settings.kafka.client_settings(), tail=settings.input.tail
    )


def llm_base_url(settings: Settings) -> str | None:
    """The implicit endpoint's URL (unused when `llm.endpoints` are configured); refuses the
    local profile without any endpoint (run.py starts the simulator and sets
    OPENAI_BASE_URL)."""
    url = settings.llm.resolved_base_url()
    if url is None and settings.app.profile == "local" and not settings.llm.endpoints:
        msg = (
            "no LLM endpoint: set llm.base_url or OPENAI_BASE_URL, or start the flow with "
            "`python run.py`, which starts the bundled simulator"
        )
        raise ConfigError(msg)
    return url


def build_flow(
    settings: Settings,
    *,
    clock: Clock = time.time,
    executor: Callable[[], LLMExecutor] | None = None,
    process: tuple[int, int] = (0, 1),
) -> Dataflow:
    """Build the dataflow for `settings` (no connections are opened here).

    `process` is this process's `(index, count)`: the LLM limits in `settings.llm` are the
    deployment's, and this process takes its share (`LLMConfig.process_share`); its stores
    live in their own directory (`StoreLayout`), and it reads the other processes' LLM caches.
    """
    layout = StoreLayout(settings.stores.dir, process[0])
    redactor = RegexRedactor(settings.redaction.kinds) if settings.redaction.enabled else None
    if executor is None:
        base_url = llm_base_url(settings)
        llm_cfg = settings.llm.process_share(*process)
        budgets = shared_budgets(
            settings.token_budgets(), layout.budgets, layout.peer_budgets, process
        )

        def executor() -> LLMExecutor:
            peers = tuple(str(p) for p in layout.peer_caches())
            chars = settings.memory.max_chars_per_turn
            cache = str(layout.llm_cache)
            erased = str(layout.erasures) if settings.input.erasures is not None else None
            return shared_executor(
                llm_cfg, base_url, cache, peers, redactor, chars, erased, budgets
            )

    backpressure.configure(settings.llm.max_pending_items)
    summary_task = settings.memory.summary_task if settings.memory.max_tokens else None
    router = Router(settings.llm.routes, summary_task, settings.tenant_tasks())
    out = settings.output
    sources = {s.name: s for s in settings.input.sources}

    flow = Dataflow(FLOW_ID)
    raw = op.input("ingest", flow, _source(settings))
    valid = decode_validate(
        "decode", raw, sources, settings.validation, clock, settings.input.adapters
    )
    events: Stream[Event] = redact("redact", valid.oks, redactor)
    keyed = op.key_on("key", events, lambda e: e.key)
    fresh = dedup(
        "dedup",
        keyed,
        settings.validation.dedup_ttl_s,
        settings.validation.dedup_max_ids_per_entity,
        clock,
    )
    detected = detect_anomalies("anomaly", fresh.oks, settings.anomaly, clock)

    dead: list[Stream[DeadLetter]] = [op.map("count_invalid", valid.errs, _count_invalid)]
    accepted = detected.oks
    if settings.anomaly.late_policy == "dead_letter":
        dead.append(op.map("late_dlq", detected.late, lambda kv: _late_letter(kv[1])))
    else:
        late = op.map_value("count_late", detected.late, _count_late)
        accepted = op.merge("with_late", accepted, late)

    to_ledger = router.ledger
    ledger = op.flat_map_batch("ledger", accepted, lambda b: [to_ledger(kv[1]) for kv in b])
    dup_ledger = op.map("dup_ledger", fresh.dups, lambda kv: _duplicate_entry(kv[1]))
    context_kinds = (Kind.CHAT, Kind.BUSINESS)
    with_memory = op.flat_map_batch(
        "needs_memory", accepted, lambda b: [kv for kv in b if kv[1].kind in context_kinds]
    )
    table = reference_table(settings, process[0])
    docs = knowledge_table(settings, process[0])
    erasures = erasure_table(settings, process[0])
    # Audit records: one per LLM request or cache hit, plus activity records (core.activity).
    audits: list[Stream[Audit]] = []
    if erasures is None or settings.input.erasures is None:
        remembered = remember("memory", with_memory, settings.memory, clock)
    else:
        # Each process applies every erasure to its stores (its table, read to the end
        # before any event is enriched); this input carries them through the memory of
        # the subject's key to the audit, and dead-letters invalid ones.
        requests = parse_erasures(
            "erasures",
            op.input("erasures_in", flow, _reference_source(settings, settings.input.erasures)),
        )
        dead.append(requests.errs)
        keyed_requests = op.key_on("erasure_key", requests.oks, lambda r: r.key)
        lookup = _erasure_lookup(erasures, table, docs)
        memory = remember_erasing(
            "memory", with_memory, keyed_requests, settings.memory, lookup, clock
        )
        remembered = memory.oks
        audits.append(
            complete_erasures("erasure_done", memory.erased, lambda: lookup().store, clock)
        )
    if router.may_route(Kind.METRIC):
        # Metric events keep no memory; the routes send some of them to a task.
        metrics = op.filter("routed_metrics", accepted, lambda kv: kv[1].kind is Kind.METRIC)
        bare = op.map_value("metric_work", metrics, lambda e: Remembered(e, ()))
        remembered = op.merge("with_metrics", remembered, bare)

    work = route("route", remembered, detected.alerts, router, clock)
    if table is None:
        work = attach_profiles("profiles", work, None)
    else:
        work = attach_profiles("profiles", work, table.store_path, lambda: ensure_reference(table))
    retrieving = {t.name: t.knowledge for t in settings.llm.tasks if t.knowledge is not None}
    if docs is None:
        work = attach_knowledge("knowledge", work, None, retrieving)
    else:
        index_path = docs.store_path
        work = attach_knowledge(
            "knowledge",
            work,
            lambda: open_knowledge(index_path),
            retrieving,
            lambda: ensure_reference(docs),
        )
    llm = call_llm("llm", work, settings.llm, executor, clock)
    dead.append(llm.errs)
    audits.insert(0, llm.audit)
    if any(s.tenants is not None for s in settings.input.sources):
        audits.append(
            op.filter_map("tenant_refusals", valid.errs, lambda dl: tenant_refusal(dl, clock()))
        )

    # The profile store and the knowledge index are filled by each process's
    # `ReferenceTable`; these inputs only dead-letter invalid records, once for the
    # deployment, with recovered offsets.
    if settings.input.profiles is not None:
        updates = op.input(
            "profiles_in", flow, _reference_source(settings, settings.input.profiles)
        )
        dead.append(op.filter_map("profile_errors", updates, _profile_dead_letter))
    if settings.input.knowledge is not None:
        documents = op.input(
            "knowledge_in", flow, _reference_source(settings, settings.input.knowledge)
        )
        max_doc = settings.knowledge.max_doc_bytes
        dead.append(
            op.filter_map(
                "knowledge_errors", documents, lambda r: _document_dead_letter(r, max_doc)
            )
        )

    publish("out_alerts", detected.alerts, alert_kv, _sink(settings, "alerts", out.alerts))
    # Summaries are the memory's, not answers to events: they are in the cache and the audit.
    answers = op.filter("answers", llm.answers, lambda r: r.item.task != summary_task)
    for n, (topic, names) in enumerate(task_topics(settings).items()):
        # A task with an output topic of its own: its answers go there, the rest go on.
        own: BranchOut[Response, Response] = op.branch(f"to_topic_{n}", answers, _of(names))
        publish(f"out_topic_{n}", own.trues, response_kv, _sink(settings, topic, topic))
        answers = own.falses
    publish("out_responses", answers, response_kv, _sink(settings, "responses", out.responses))
    audit = audits[0] if len(audits) == 1 else op.merge("audits", *audits)
    publish("out_audit", audit, audit_kv, _sink(settings, "audit", out.audit))
    publish(
        "out_dead_letters",
        op.merge("dead_letters", *dead),
        bounded_dead_letter_kv(settings.validation.max_bytes),
        _sink(settings, "dead_letters", out.dead_letters),
    )
    all_ledger = op.merge("ledger_all", ledger, dup_ledger)
    if out.ledger:
        sink = _sink(settings, "ledger", out.ledger)
        publish_batches("out_ledger", all_ledger, ledger_batch_kv, sink)
    else:
        op.flat_map_batch("count_ledger", all_ledger, _count_only)
    return flow


def _of(tasks: frozenset[str]) -> Callable[[Response], bool]:
    return lambda r: r.item.task in tasks


def task_topics(settings: Settings) -> dict[str, frozenset[str]]:
    """The answer topics of tasks with an `output_topic` (other than the responses one), each
    with the names of the tasks writing to it; with file output, each is the file
    `<output.dir>/<topic>.jsonl`."""
    topics: dict[str, set[str]] = {}
    for task in settings.llm.tasks:
        if task.output_topic is not None and task.output_topic != settings.output.responses:
            topics.setdefault(task.output_topic, set()).add(task.name)
    return {t: frozenset(names) for t, names in topics.items()}


def build(config_path: str) -> Dataflow:
    """Entry point for `python -m bytewax.run "flows.pipeline:build('config/…toml')"`.

    Sets the process up (logging, graceful stop), refuses a damaged `-r` directory with the
    fix, builds the flow, reads the reference data to its end (`prepare_stores`), tunes the GC
    and starts the progress log.
    """
    try:
        settings = load_config(config_path)
    except ConfigError as exc:
        # Bad configuration is exit code 2 under both entry points, with one short message.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        preflight(settings, config_path)
    except KafkaUnavailable as exc:
        # Unreachable broker or missing topics: exit 1 with one line naming the fix.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    setup_process(settings.app)
    recovery = recovery_directory_argument()
    if recovery is not None:
        check_recovery_directory(recovery)
    process = process_position()
    try:
        flow = build_flow(settings, process=process)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        prepare_stores(settings, process[0])
    except (StoreError, ReferenceBootstrapError, KafkaUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    tune_gc()
    run = RunAudit(settings, config_path, process)
    run.started()
    run.stop_at_exit()
    start_progress(settings.app.progress_every_s)
    log.info(
        "flow built",
        extra={
            "config": config_path,
            "profile": settings.app.profile,
            "input": settings.input.kind,
            "output": settings.output.kind,
        },
    )
    return flow


def reference_table(settings: Settings, process: int = 0) -> ReferenceTable | None:
    """The profile table of process `process`: its seed and profiles input, into the profile
    store of its `StoreLayout`; None when the config has neither."""
    profiles, seed = settings.input.profiles, settings.stores.profiles_seed
    if profiles is None and seed is None:
        return None
    return ReferenceTable(
        profiles,
        StoreLayout(settings.stores.dir, process).profiles,
        settings.kafka.client_settings() if settings.input.kind == "kafka" else {},
        seed=seed,
        timeout_s=settings.stores.bootstrap_timeout_s,
        tail=settings.input.tail,
    )


def knowledge_table(settings: Settings, process: int = 0) -> ReferenceTable | None:
    """The knowledge table of process `process`: its knowledge input, into the knowledge
    index of its `StoreLayout`; None when the config has none."""
    source = settings.input.knowledge
    if source is None:
        return None
    k = settings.knowledge
    e = k.embeddings
    retrieval = RetrievalSettings(
        chunk_tokens=k.chunk_tokens,
        overlap_tokens=k.overlap_tokens,
        title_weight=k.title_weight,
        proximity_weight=k.proximity_weight,
        proximity_window=k.proximity_window,
        **({} if e is None else _hybrid_settings(e)),
    )
    return ReferenceTable(
        source,
        StoreLayout(settings.stores.dir, process).knowledge,
        settings.kafka.client_settings() if settings.input.kind == "kafka" else {},
        timeout_s=settings.stores.bootstrap_timeout_s,
        tail=settings.input.tail,
        table=lambda path: KnowledgeTable(
            path, retrieval, k.max_doc_bytes, None if e is None else shared_embeddings(e)
        ),
    )


def erasure_table(settings: Settings, process: int = 0) -> ReferenceTable | None:
    """The erasure table of process `process`: its erasures input, applied to the stores of
    its `StoreLayout` (profiles, knowledge index, response cache); None without one."""
    source = settings.input.erasures
    if source is None:
        return None
    layout = StoreLayout(settings.stores.dir, process)
    has_profiles = settings.input.profiles is not None or settings.stores.profiles_seed
    profiles = str(layout.profiles) if has_profiles else None
    index = str(layout.knowledge)
    cache, ttl = str(layout.llm_cache), settings.llm.cache_ttl_s

    def knowledge() -> SqliteKnowledgeIndex:
        return open_knowledge(index)

    def build(path: str) -> ErasureTable:
        return ErasureTable(
            path,
            profiles=profiles,
            knowledge=knowledge if settings.input.knowledge is not None else None,
            cache=lambda: ResponseCache(cache, ttl),
        )

    return ReferenceTable(
        source,
        layout.erasures,
        settings.kafka.client_settings() if settings.input.kind == "kafka" else {},
        timeout_s=settings.stores.bootstrap_timeout_s,
        tail=settings.input.tail,
        table=build,
    )


def _erasure_lookup(
    erasures: ReferenceTable, *others: ReferenceTable | None
) -> Callable[[], ErasureTable]:
    """This process's erasure table, read to its end (after the tables it erases from, so
    they are opened with their own settings first)."""

    def ready() -> ErasureTable:
        for other in others:
            if other is not None:
                ensure_reference(other)
        ref = ensure_reference(erasures)
        found = ref.table(ref.store_path)
        assert isinstance(found, ErasureTable)
        return found

    return ready


def _hybrid_settings(e: EmbeddingsConfig) -> dict[str, Any]:
    return {
        "rrf_k": e.rrf_k,
        "vector_candidates": e.vector_candidates,
        "embed_retry_s": min(1.0, e.backoff_max_s),
        "embed_retry_max_s": e.backoff_max_s,
    }


def prepare_stores(settings: Settings, process: int = 0) -> None:
    """Before the flow starts: open this process's stores (a locked or foreign store raises
    its `StoreError` now, with the fix) and read the reference data to its end.

    The profiles lookup would do the same before its first item; the entry points call this
    first so that a problem is one line and an exit code, not a failed worker.
    """
    tables = (
        reference_table(settings, process),
        knowledge_table(settings, process),
        erasure_table(settings, process),  # last: it erases from the others
    )
    for table in tables:
        if table is not None:
            ensure_reference(table)
