"""The batched LLM stage: micro-batches per route, requests off the dataflow thread.

Work items are keyed by `tenant/shard` (one tenant per prompt, so tenants never share a
request; the shard is of the entity, so every task of one conversation runs on one worker).
Per key and task, a `stateful_batch` logic buffers items and cuts a micro-batch when it has
`max_batch` items, when their estimated prompt tokens reach `max_batch_tokens` (or the task's
`prompt_budget_tokens`, if smaller), when the oldest has waited `max_wait_ms`, or at once for
an `urgent` task. Each batch is handed to the shared
`LLMExecutor` pool; while requests are in flight the logic asks to be woken every `poll_ms`
(`notify_at`) and emits finished answers from `on_notify`, so answers flow out even while the
input is idle and a slow request delays only its own items. At the end of a finite input,
`on_eof` waits for every request in flight.

A pack whose prompt the endpoint refuses as over the model's context (a 400, see
`inference.client.context_exceeded`) is not retried as it was: its items are asked again in
two halves, halving again while refused, then alone; an item refused alone is dead-lettered
with the endpoint's reason.

A tenant whose daily token budget is spent (`state.budgets`; the executor sends no request
for it) has its items, but for answers already cached, held here with `on_budget_spent =
"wait"`, up to `llm.max_held_items` per key and task (the newest beyond are dead-lettered),
and sent again once the budget starts again (at the next UTC midnight, checked then and at
the key's next item); with `"dead_letter"`, or when a finite input ends, they are
dead-lettered with the reason. Held items do not count towards backpressure: one tenant's
spent budget does not pause the inputs of the others.

State (the snapshot, an immutable tuple of frozen work items): every item not yet emitted,
whether still buffered, in flight or held for a budget. On resume those items are submitted
again; the executor finds the ones answered before the crash in the response cache and emits
them without a new request. It is bounded by the input rate times the LLM latency; the logic
is discarded when nothing is pending.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from config.models import LLMConfig, TaskConfig
from core.clock import Clock
from core.records import Audit, DeadLetter, Response, WorkItem
from inference import prompts
from inference.client import CallOutcome, Failed, LLMExecutor
from runtime import backpressure, metrics

LLMEmit = Response | Audit | DeadLetter


class MicroBatcher:
    """Pure batching policy for one key: when to cut a batch and which items go in it."""

    def __init__(self, task: TaskConfig, tokens: Callable[[WorkItem], int]) -> None:
        self.task = task
        self.tokens = tokens
        self.pending: list[WorkItem] = []
        self.pending_tokens = 0
        self.oldest: float | None = None

    def add(self, items: Iterable[WorkItem], now: float) -> None:
        for item in items:
            if not self.pending:
                self.oldest = now
            self.pending.append(item)
            self.pending_tokens += self.tokens(item)

    def due(self, now: float) -> bool:
        if not self.pending:
            return False
        t = self.task
        return (
            t.urgent
            or len(self.pending) >= t.max_batch
            or self.pending_tokens >= t.batch_tokens
            or (self.oldest is not None and (now - self.oldest) * 1000 >= t.max_wait_ms)
        )

    def take(self) -> list[WorkItem]:
        """Cut one batch: up to `max_batch` items within the token budget (at least one)."""
        batch: list[WorkItem] = []
        used = 0
        for item in self.pending:
            cost = self.tokens(item)
            if batch and (
                len(batch) >= self.task.max_batch or used + cost > self.task.batch_tokens
            ):
                break
            batch.append(item)
            used += cost
        del self.pending[: len(batch)]
        self.pending_tokens -= used
        if not self.pending:
            self.oldest = None
        return batch

    def drop_newest(self, n: int) -> list[WorkItem]:
        """Remove and return the `n` most recently added items (for load shedding)."""
        if n <= 0:
            return []
        dropped = self.pending[-n:]
        del self.pending[-n:]
        self.pending_tokens -= sum(self.tokens(i) for i in dropped)
        if not self.pending:
            self.oldest = None
        return dropped

    def wake_at(self) -> float | None:
        if self.oldest is None:
            return None
        return self.oldest + self.task.max_wait_ms / 1000


class _LLMLogic(StatefulBatchLogic[WorkItem, LLMEmit, tuple[WorkItem, ...]]):
    def __init__(
        self,
        task: TaskConfig,
        executor: Callable[[], LLMExecutor],
        poll_s: float,
        clock: Clock,
        resume: tuple[WorkItem, ...] | None,
    ) -> None:
        self.task = task
        self.executor = executor
        self.poll_s = poll_s
        self.clock = clock
        self.batcher = MicroBatcher(task, _token_cache)
        self.inflight: list[tuple[list[WorkItem], Future[CallOutcome]]] = []
        self.held = 0  # items buffered or in flight: the process's inputs pause on the sum
        self.waiting: list[WorkItem] = []  # held until their tenant's budget starts again
        self.wait_until: float | None = None
        backpressure.register(self)
        if resume:
            # Re-send what was pending at the snapshot, without waiting for a batch to fill.
            self._add(resume, clock() - task.max_wait_ms / 1000)

    def _add(self, items: list[WorkItem] | tuple[WorkItem, ...], now: float) -> None:
        self.batcher.add(items, now)
        metrics.LLM_PENDING.inc(len(items))
        self.held += len(items)

    def _submit_due(self, now: float, force: bool = False) -> None:
        executor = self.executor()
        while self.batcher.pending and (force or self.batcher.due(now)):
            if (
                not force
                and len(self.inflight) >= executor.capacity
                and not executor.can_serve(self.task)
            ):
                break  # every endpoint is down: hold further batches here, in our state
            batch = self.batcher.take()
            if self.task.mode == "fanout":
                # One request per item, each its own pool task, so they run concurrently.
                self.inflight.extend(([i], executor.submit(self.task, [i])) for i in batch)
            else:
                self.inflight.append((batch, executor.submit(self.task, batch)))

    def _shed(self) -> list[LLMEmit]:
        """While no endpoint can serve the task (every breaker open), dead-letter what exceeds
        `max_held_items` (newest first); nothing is shed while any endpoint can serve."""
        executor = self.executor()
        limit = executor.cfg.max_held_items
        held = len(self.batcher.pending) + sum(len(b) for b, _ in self.inflight)
        if held <= limit or executor.can_serve(self.task):
            return []
        dropped = self.batcher.drop_newest(held - limit)
        held -= len(dropped)
        # Then batches handed to the pool but not started yet, newest first.
        for batch, fut in reversed(list(self.inflight)):
            if held <= limit:
                break
            if fut.cancel():
                self.inflight.remove((batch, fut))
                dropped.extend(batch)
                held -= len(batch)
        metrics.LLM_PENDING.dec(len(dropped))
        self.held -= len(dropped)
        reason = (
            f"LLM endpoints unavailable (circuit breakers open) and {limit} items already held "
            "for this task (llm.max_held_items)"
        )
        return [self._dead(i, reason, None) for i in dropped]

    def _collect(self, wait: bool = False) -> list[LLMEmit]:
        out: list[LLMEmit] = []
        still = []
        again: list[list[WorkItem]] = []
        for batch, fut in self.inflight:
            if not (wait or fut.done()):
                still.append((batch, fut))
                continue
            metrics.LLM_PENDING.dec(len(batch))
            self.held -= len(batch)
            try:
                outcome = fut.result()
            except Exception as exc:
                reason = f"LLM stage error: {type(exc).__name__}: {exc}"
                out.extend(self._dead(i, reason, None) for i in batch)
                continue
            now = self.clock()
            out.extend(
                Response(
                    a.item,
                    self.task.name,
                    a.model or self.task.model,
                    a.answer,
                    a.cached,
                    now,
                    a.citations,
                    a.endpoint,
                    a.fallback,
                )
                for a in outcome.answered
            )
            out.extend(
                self._dead(f.item, f.reason, f.raw_answer)
                for f in outcome.failed
                if not (f.retry_smaller or f.over_budget)
            )
            out.extend(self._hold_for_budget([f for f in outcome.failed if f.over_budget]))
            smaller = [f.item for f in outcome.failed if f.retry_smaller]
            if smaller:
                half = (len(smaller) + 1) // 2
                again += [g for g in (smaller[:half], smaller[half:]) if g]
            out.extend(Audit(a) for a in outcome.audits)
        self.inflight = still
        if again:
            # Refused as over the context in a pack: ask again in halves (they stay held).
            executor = self.executor()
            for group in again:
                metrics.LLM_PENDING.inc(len(group))
                self.held += len(group)
                self.inflight.append((group, executor.submit(self.task, group)))
        return out

    def _hold_for_budget(self, failed: list[Failed]) -> list[LLMEmit]:
        """Items not asked because their tenant's budget is spent: held (`wait`, within
        `max_held_items`) or dead-lettered."""
        if not failed:
            return []
        executor = self.executor()
        tenant, reason = failed[0].item.tenant, failed[0].reason
        rules = executor.budgets.budget(tenant) if executor.budgets else None
        dropped = failed
        if rules is not None and rules.on_spent == "wait" and executor.budgets is not None:
            limit = executor.cfg.max_held_items
            room = max(0, limit - len(self.waiting))
            kept, dropped = failed[:room], failed[room:]
            self.waiting.extend(f.item for f in kept)
            self.wait_until = executor.budgets.resets_at()
            metrics.TENANT_BUDGET_ITEMS.labels(tenant, "held").inc(len(kept))
            metrics.TENANT_BUDGET_WAITING.inc(len(kept))
            reason += f", and {limit} items already wait for it (llm.max_held_items)"
        metrics.TENANT_BUDGET_ITEMS.labels(tenant, "dead_lettered").inc(len(dropped))
        return [self._dead(f.item, reason, None) for f in dropped]

    def _resume_waiting(self, now: float) -> None:
        """Send the held items again once their tenant's budget has started again."""
        if not self.waiting:
            return
        budgets = self.executor().budgets
        if budgets is not None and budgets.exhausted(self.waiting[0].tenant):
            self.wait_until = budgets.resets_at()
            return
        items, self.waiting, self.wait_until = self.waiting, [], None
        metrics.TENANT_BUDGET_WAITING.dec(len(items))
        metrics.TENANT_BUDGET_ITEMS.labels(items[0].tenant, "resumed").inc(len(items))
        self._add(items, now - self.task.max_wait_ms / 1000)

    def _dead(self, item: WorkItem, reason: str, raw_answer: str | None) -> DeadLetter:
        return DeadLetter(
            step_id=f"llm.{self.task.name}",
            reason=reason,
            source=item.source,
            event_id=item.item_id,
            tenant=item.tenant,
            detail={
                "event_ids": list(item.event_ids),
                "task": self.task.name,
                "raw_answer": raw_answer,
            },
        )

    def _done(self) -> bool:
        return not self.inflight and not self.batcher.pending and not self.waiting

    def on_batch(self, values: list[WorkItem]) -> tuple[Iterable[LLMEmit], bool]:
        now = self.clock()
        self._resume_waiting(now)
        self._add(values, now)
        self._submit_due(now)
        return self._shed() + self._collect(), self.RETAIN

    def on_notify(self) -> tuple[Iterable[LLMEmit], bool]:
        now = self.clock()
        if self.wait_until is not None and time.time() >= self.wait_until:
            self._resume_waiting(now)
        self._submit_due(now)
        out = self._shed() + self._collect()
        return out, self.DISCARD if self._done() else self.RETAIN

    def on_eof(self) -> tuple[Iterable[LLMEmit], bool]:
        # A finite input has ended: wait here for what is in flight (the dataflow ends when
        # this returns), still shedding beyond the hold bound if the endpoint is down.
        self._submit_due(self.clock(), force=True)
        out: list[LLMEmit] = []
        while self.inflight:
            out += self._shed()
            out += self._collect()
            if self.inflight:
                futures_wait(
                    [f for _, f in self.inflight],
                    timeout=self.poll_s * 10,
                    return_when=FIRST_COMPLETED,
                )
        if self.waiting:
            # Nothing will come to wake them: a finite run ends with them dead-lettered.
            n, tenant = len(self.waiting), self.waiting[0].tenant
            budgets = self.executor().budgets
            reason = budgets.spent_reason(tenant) if budgets else "daily token budget spent"
            reason += f"; the input ended while {n} items waited for it"
            metrics.TENANT_BUDGET_WAITING.dec(n)
            metrics.TENANT_BUDGET_ITEMS.labels(self.waiting[0].tenant, "dead_lettered").inc(n)
            out += [self._dead(i, reason, None) for i in self.waiting]
            self.waiting = []
        return out, self.DISCARD

    def notify_at(self) -> datetime | None:
        if self.inflight:
            return datetime.fromtimestamp(self.clock() + self.poll_s, UTC)
        at = self.batcher.wake_at()
        if at is None and self.wait_until is not None:
            return datetime.fromtimestamp(self.wait_until, UTC)  # wall clock: a UTC midnight
        return None if at is None else datetime.fromtimestamp(at, UTC)

    def snapshot(self) -> tuple[WorkItem, ...]:
        # Items are frozen; the tuple is a fresh container, so later mutation of our lists
        # cannot change a snapshot already taken.
        return (
            tuple(i for batch, _ in self.inflight for i in batch)
            + tuple(self.batcher.pending)
            + tuple(self.waiting)
        )


_tokens: dict[str, int] = {}


def _token_cache(item: WorkItem) -> int:
    # Estimated once per item; bounded because entries leave with their items.
    n = _tokens.get(item.item_id)
    if n is None:
        n = prompts.item_tokens(item)
        if len(_tokens) > 100_000:
            _tokens.clear()
        _tokens[item.item_id] = n
    return n


def _is_response(x: LLMEmit) -> TypeGuard[Response]:
    return isinstance(x, Response)


def _is_audit(x: LLMEmit) -> TypeGuard[Audit]:
    return isinstance(x, Audit)


@dataclass(frozen=True)
class LLMOut:
    """Answers, audit records (one per request or cache hit) and dead letters."""

    answers: Stream[Response]
    audit: Stream[Audit]
    errs: Stream[DeadLetter]


def shard_key(item: WorkItem, shards: int) -> str:
    """The stage's key of `item`: its tenant and a shard of its entity, whatever its task, so
    every task of one conversation runs on one worker (the replies and summaries its prompts
    read are recorded there, `inference.conversation`). One tenant per key: no request mixes
    tenants."""
    shard = zlib.crc32(item.entity.encode()) % shards if shards > 1 else 0
    return f"{item.tenant}/{shard}"


@operator
def call_llm(
    step_id: str,
    up: Stream[WorkItem],
    cfg: LLMConfig,
    executor: Callable[[], LLMExecutor],
    clock: Clock = time.time,
) -> LLMOut:
    """Answer work items with batched, concurrent LLM requests (see the module docstring).

    `executor` returns the process's shared `LLMExecutor`; it is called lazily on the worker,
    so nothing connects at build time. `clock` (epoch seconds) times the micro-batches and
    stamps `Response.emitted_at`. Every item comes out once, as an answer or a dead letter,
    plus one audit record per request (or cache hit).

    Against the bundled LLM simulator on loopback (two items, one packed request):

    >>> import bytewax.operators as op
    >>> import shutil, tempfile
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from llmsim import LLMSimulator, SimConfig
    >>> from state.stores import ResponseCache, close_all
    >>> sim = LLMSimulator(SimConfig(latency_ms=1)).start()
    >>> tmp = tempfile.mkdtemp()
    >>> task = TaskConfig(name="chat_reply", schema_name="chat_reply", model="sim-1")
    >>> cfg = LLMConfig(tasks=(task,), routes=())
    >>> pool = LLMExecutor(cfg, sim.base_url, ResponseCache(f"{tmp}/cache"))
    >>> items = [WorkItem(f"m{i}", (f"m{i}",), "acme", "s1", "u1", "chat_reply", "x",
    ...                   {"text": "How do I reset my password?"}, {}, 0.0) for i in (1, 2)]
    >>> flow = Dataflow("llm_eg")
    >>> up = op.input("in", flow, TestingSource(items, batch_size=2))
    >>> out = call_llm("llm", up, cfg, lambda: pool)
    >>> answers, audit, errs = [], [], []
    >>> op.output("answers", out.answers, TestingSink(answers))
    >>> op.output("audit", out.audit, TestingSink(audit))
    >>> op.output("errs", out.errs, TestingSink(errs))
    >>> run_main(flow)
    >>> sorted((r.item.item_id, r.answer["reply"][:11]) for r in answers)
    [('m1', '[simulated]'), ('m2', '[simulated]')]
    >>> [(a.record["batch_size"], a.record["outcome"]) for a in audit], errs
    ([(2, 'ok')], [])
    >>> pool.close(); close_all(); sim.stop(); shutil.rmtree(tmp)
    """
    tasks = {t.name: t for t in cfg.tasks}
    keyed = op.key_on("key", up, lambda i: shard_key(i, cfg.shards_per_task))

    def builder(resume: tuple[WorkItem, ...] | None) -> _TasksLogic:
        # Bytewax does not pass the key to the builder; each item names its task.
        return _TasksLogic(tasks, executor, cfg.poll_ms / 1000, clock, resume)

    emitted = op.stateful_batch("batch", keyed, builder)
    values = op.map("unkey", emitted, lambda kv: kv[1])
    is_resp = op.branch("is_response", values, _is_response)
    rest = op.branch("is_audit", is_resp.falses, _is_audit)
    # The TypeGuards narrow `trues`; Bytewax types `falses` as the upstream type, and what is
    # neither a `Response` nor an `Audit` is a `DeadLetter`.
    errs = cast(Stream[DeadLetter], rest.falses)
    return LLMOut(answers=is_resp.trues, audit=rest.trues, errs=errs)


class _TasksLogic(StatefulBatchLogic[WorkItem, LLMEmit, tuple[WorkItem, ...]]):
    """The stage of one key (tenant and shard): one `_LLMLogic` per task, built with the
    task's first item and dropped once it holds nothing; discarded when none is left.

    The snapshot is every task's pending items in one tuple (each item names its task), the
    same layout a key of one task had, so older snapshots resume as they are.
    """

    def __init__(
        self,
        tasks: dict[str, TaskConfig],
        executor: Callable[[], LLMExecutor],
        poll_s: float,
        clock: Clock,
        resume: tuple[WorkItem, ...] | None,
    ) -> None:
        self.tasks = tasks
        self.args = (executor, poll_s, clock)
        self.logics: dict[str, _LLMLogic] = {}
        for task, items in _by_task(resume or ()).items():
            self.logics[task] = self._build(task, tuple(items))

    def _build(self, task: str, resume: tuple[WorkItem, ...] | None) -> _LLMLogic:
        executor, poll_s, clock = self.args
        return _LLMLogic(self.tasks[task], executor, poll_s, clock, resume)

    def on_batch(self, values: list[WorkItem]) -> tuple[Iterable[LLMEmit], bool]:
        out: list[LLMEmit] = []
        for task, items in _by_task(values).items():
            logic = self.logics.get(task)
            if logic is None:
                logic = self.logics[task] = self._build(task, None)
            out.extend(logic.on_batch(items)[0])
        return out, self.RETAIN

    def _each(self, step: str) -> tuple[Iterable[LLMEmit], bool]:
        out: list[LLMEmit] = []
        for task, logic in list(self.logics.items()):
            emitted, keep = getattr(logic, step)()
            out.extend(emitted)
            if keep == self.DISCARD:
                del self.logics[task]
        return out, self.RETAIN if self.logics else self.DISCARD

    def on_notify(self) -> tuple[Iterable[LLMEmit], bool]:
        return self._each("on_notify")

    def on_eof(self) -> tuple[Iterable[LLMEmit], bool]:
        return self._each("on_eof")

    def notify_at(self) -> datetime | None:
        times = [t for t in (logic.notify_at() for logic in self.logics.values()) if t]
        return min(times, default=None)

    def snapshot(self) -> tuple[WorkItem, ...]:
        return tuple(i for logic in self.logics.values() for i in logic.snapshot())


def _by_task(items: Iterable[WorkItem]) -> dict[str, list[WorkItem]]:
    grouped: dict[str, list[WorkItem]] = {}
    for item in items:
        grouped.setdefault(item.task, []).append(item)
    return grouped
