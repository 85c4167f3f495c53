"""The metrics registry of ContextStream and a snapshot of it for progress lines and summaries.

Prometheus metrics, served by Bytewax's API server at `/metrics` when
`BYTEWAX_DATAFLOW_API_ENABLED=true`.

Metric objects live in prometheus_client's process-wide registry, like Bytewax's own.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "contextstream_events_total",
    "Records by outcome: in, valid, invalid, duplicate, late.",
    ["outcome"],
)
ALERTS = Counter("contextstream_alerts_total", "Anomaly alerts raised.", ["detector"])
DEAD_LETTERS = Counter("contextstream_dead_letters_total", "Dead letters by step.", ["step"])
ACTIVITY = Counter(
    "contextstream_activity_total", "Activity audit records by activity.", ["activity"]
)
LLM_REQUESTS = Counter(
    "contextstream_llm_requests_total",
    "LLM requests (and cache-hit lookups) by outcome.",
    ["route", "outcome"],
)
LLM_ITEMS = Counter(
    "contextstream_llm_items_total",
    "Items answered, by whether the cache answered them.",
    ["route", "cached"],
)
LLM_TOKENS = Counter("contextstream_llm_tokens_total", "Tokens used.", ["route", "kind"])
LLM_RETRIES = Counter("contextstream_llm_retries_total", "Extra attempts.", ["route"])
LLM_BATCH = Histogram(
    "contextstream_llm_batch_size",
    "Items per LLM request.",
    ["route"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
LLM_LATENCY = Histogram(
    "contextstream_llm_request_seconds",
    "LLM request latency (all attempts).",
    ["route"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
ANSWER_LATENCY = Histogram(
    "contextstream_answer_latency_seconds",
    "Ingestion to answer emission.",
    ["route"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
# Bound children for the per-event hot path (`labels()` costs a dict lookup and a lock).
EVENTS_IN = EVENTS.labels("in")
EVENTS_VALID = EVENTS.labels("valid")
EVENTS_INVALID = EVENTS.labels("invalid")
EVENTS_DUPLICATE = EVENTS.labels("duplicate")
EVENTS_LATE = EVENTS.labels("late")

LLM_CONTEXT_DROPPED = Counter(
    "contextstream_llm_context_dropped_total",
    "Context units (turns, chunks, profiles, summaries) left out of prompts by the budget.",
    ["route", "section"],
)
LLM_OVER_BUDGET = Counter(
    "contextstream_llm_over_budget_total",
    "Requests over their prompt budget: by the estimate (the items alone exceed it) or by "
    "the tokens the endpoint reported.",
    ["route", "basis"],
)
LLM_RATE_LIMITED = Counter(
    "contextstream_llm_rate_limited_total", "429 answers from the endpoint.", ["route"]
)
LLM_CONCURRENCY_LIMIT = Gauge(
    "contextstream_llm_concurrency_limit", "Current (adaptive) limit of requests in flight."
)
LLM_BREAKER_STATE = Gauge(
    "contextstream_llm_breaker_state",
    "Circuit breaker: 0 closed, 1 half-open, 2 open (of several endpoints: the best).",
)
LLM_ENDPOINT_BREAKER_STATE = Gauge(
    "contextstream_llm_endpoint_breaker_state",
    "Circuit breaker of one llm.endpoints entry: 0 closed, 1 half-open, 2 open.",
    ["endpoint"],
)
LLM_ENDPOINT_ANSWERS = Counter(
    "contextstream_llm_endpoint_answers_total",
    "Requests answered, by endpoint and whether the task's fallback model answered.",
    ["endpoint", "fallback"],
)
INPUT_LAG = Gauge(
    "contextstream_input_lag_messages",
    "Messages between an input partition's read position and its end offset (high watermark).",
    ["topic", "partition"],
)
REFERENCE_BOOTSTRAP_SECONDS = Gauge(
    "contextstream_reference_bootstrap_seconds",
    "Time a process took to read a reference input to its end offsets at start.",
    ["input"],
)
REFERENCE_FRESHNESS = Histogram(
    "contextstream_reference_freshness_seconds",
    "From a followed reference record's broker timestamp to its store commit (searchable).",
    ["input"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ERASURE_SECONDS = Histogram(
    "contextstream_erasure_seconds",
    "From a process first reading an erasure request to every store of it having applied it.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ERASED_DROPPED = Counter(
    "contextstream_erasure_dropped_total",
    "Data about an erased subject from before its erasure, dropped on arrival (replays).",
    ["what"],
)
REFERENCE_UPDATES = Counter(
    "contextstream_reference_updates_total",
    "Reference records applied after the bootstrap (followed as they arrive).",
    ["input"],
)
KNOWLEDGE_EMBEDDING_FAILURES = Counter(
    "contextstream_knowledge_embedding_failures_total",
    "Embeddings requests of the knowledge index that failed (ingest: the chunks stay lexical "
    "until the backfill embeds them; query: that search was lexical only).",
    ["stage"],
)
KNOWLEDGE_LEXICAL_ONLY = Counter(
    "contextstream_knowledge_lexical_only_searches_total",
    "Searches of an index with embeddings answered lexically only (no query vector: the "
    "endpoint failed, or is backed off after a failure).",
)
TENANT_TOKENS = Counter(
    "contextstream_tenant_tokens_total",
    "Tokens the LLM requests of a tenant spent (prompt and completion).",
    ["tenant"],
)
TENANT_BUDGET_LEFT = Gauge(
    "contextstream_tenant_budget_remaining_tokens",
    "Tokens this process may still spend today for a tenant with a daily token budget.",
    ["tenant"],
)
TENANT_BUDGET_ITEMS = Counter(
    "contextstream_tenant_budget_items_total",
    "Work items of a tenant whose daily token budget was spent: held, resumed the next day, "
    "or dead-lettered.",
    ["tenant", "action"],
)
TENANT_BUDGET_WAITING = Gauge(
    "contextstream_tenant_budget_waiting_items",
    "Work items held in the LLM stage until their tenant's daily token budget starts again.",
)
LLM_PENDING = Gauge("contextstream_llm_pending_items", "Items buffered or in flight.")

OUTPUT_STALLED = Gauge(
    "contextstream_output_stalled",
    "1 while an output topic's messages wait for an unreachable or stalled broker.",
    ["topic"],
)
OUTPUT_REPRODUCED = Counter(
    "contextstream_output_reproduced_total",
    "Messages produced again after a transient delivery failure (broker stall).",
    ["topic"],
)
OUTPUT_STALL_SECONDS = Counter(
    "contextstream_output_stall_seconds_total",
    "Time spent waiting for a stalled broker in output writes.",
    ["topic"],
)


def _total(counter: Counter, **match: str) -> float:
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            if all(sample.labels.get(k) == v for k, v in match.items()):
                total += sample.value
    return total


def snapshot() -> dict[str, float]:
    """Current totals, for progress lines and the end-of-run summary."""
    return {
        "in": _total(EVENTS, outcome="in"),
        "valid": _total(EVENTS, outcome="valid"),
        "invalid": _total(EVENTS, outcome="invalid"),
        "duplicates": _total(EVENTS, outcome="duplicate"),
        "late": _total(EVENTS, outcome="late"),
        "dead_letters": _total(DEAD_LETTERS),
        "alerts": _total(ALERTS),
        "llm_requests": _total(LLM_REQUESTS) - _total(LLM_REQUESTS, outcome="cache_hit"),
        "cache_hits": _total(LLM_ITEMS, cached="true"),
        "answers": _total(LLM_ITEMS),
        "lag": sum(
            s.value for metric in INPUT_LAG.collect() for s in metric.samples if s.value > 0
        ),
    }
