"""Executing LLM requests off the dataflow thread: cache, retries, validation, audit.

`LLMExecutor.run(task, items)` is called on a pool thread. For each item it first consults the
response cache (rocksdict, keyed by `prompts.item_fingerprint`); the rest go to the endpoint
in one packed request (or one request per item in `fanout` mode) through the official
`openai` client with its own retries disabled and our per-attempt timeout. 429, 5xx,
timeouts and connection errors are retried with exponential backoff and full jitter,
honouring `retry-after`; other errors fail at once. Items missing from a packed answer or
failing their task's JSON Schema (`prompts.task_spec`) are asked again alone, once; what
still fails becomes a failure for the dead letters, with the raw answer attached and the
failing path in the reason. The cache key includes the task's schema and instructions. A 400
saying the prompt exceeds the model's context (`context_exceeded`) is not retried either: a
pack's items come back as failures marked `retry_smaller` (the stage asks them again in
halves), an item asked alone as a plain failure with the endpoint's reason.

Valid answers are written to the cache *before* `run` returns, so an answer that reaches the
output has always been persisted first: a replay after a crash finds it and pays nothing.

Prompts are assembled here, on the pool thread (`prompts.assemble`): every string of the items'
data and context passes the configured redactor, and a task with `prompt_budget_tokens` has
its context trimmed to fit. The budget is in the endpoint's tokens; the offline estimate is
multiplied by the model's calibration factor (`budget.TokenCalibration`, learned from each
answer's `usage.prompt_tokens`). A pack whose items' own data would not fit is split into
several requests first.

Tenants' daily token budgets (`state.budgets`): a request whose tenant has spent its budget
is not sent (its items come back as failures marked `over_budget`, for the stage to hold or
dead-letter); each answered request's reported tokens are charged to its tenant, and the
request that spends the last of a day's budget adds a `budget_spent` activity record.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai

from config.models import LLMConfig, TaskConfig
from core.activity import activity_record
from core.records import Audit, WorkItem
from inference import budget, prompts
from inference.conversation import prepare, reply_of, summary_of
from inference.endpoints import Endpoint, EndpointPool
from inference.limits import BreakerState, Limiter, Outcome
from runtime import metrics
from state.budgets import TokenBudgets
from state.erasure import open_erasures
from state.stores import Owner, Reply, ResponseCache, Summary

Sleep = Callable[[float], None]
log = logging.getLogger("contextstream.llm")
_BREAKER_LEVEL = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class Answered:
    item: WorkItem
    answer: dict[str, Any]
    cached: bool
    citations: tuple[dict[str, Any], ...] = ()
    """The knowledge chunks the answer's prompt carried (`prompts.Prompt.citations`)."""
    model: str | None = None
    """The model that answered (None: the task's)."""
    endpoint: str | None = None
    """The endpoint that answered (None: a cache hit)."""
    fallback: bool = False
    """Answered by the task's fallback model (`TaskConfig.fallback`)."""


@dataclass(frozen=True)
class Failed:
    item: WorkItem
    reason: str
    raw_answer: str | None = None
    retry_smaller: bool = False
    """The request carried other items too and its prompt exceeded the model's context: ask
    this item again in a smaller pack (`operators.llm` halves it) instead of giving up."""
    over_budget: bool = False
    """Not asked: the tenant's daily token budget is spent (`state.budgets`); the stage holds
    the item until the budget starts again or dead-letters it (`on_budget_spent`)."""


@dataclass
class CallOutcome:
    """Everything one `run` produced: answers, failures and one audit record per request."""

    answered: list[Answered] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Served:
    """Which model, on which endpoint (None: from the cache), answered a request."""

    model: str
    endpoint: str | None
    fallback: bool


class RetryableError(Exception):
    """A failed attempt that may succeed if repeated (429, 5xx, timeout, connection)."""

    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


CONTEXT_EXCEEDED = frozenset({"exceed_context_size_error", "context_length_exceeded"})
"""The error `type` (llama-server) or `code` (OpenAI) of a 400 for a prompt over the context."""


def context_exceeded(exc: openai.APIStatusError) -> str | None:
    """The error kind if `exc` is a 400 refusing the prompt as longer than the model's
    context (one of `CONTEXT_EXCEEDED`), else None.

    llama-server answers `{"error": {"type": "exceed_context_size_error", ...}}`, OpenAI
    `{"error": {"code": "context_length_exceeded", ...}}`; the client's `body` is the inner
    object (or the whole body, depending on the server).
    """
    if exc.status_code != 400:
        return None
    body = exc.body
    err = body.get("error", body) if isinstance(body, dict) else None
    said = {err.get("type"), err.get("code")} if isinstance(err, dict) else set()
    said.add(str(exc.message))
    return next((kind for kind in CONTEXT_EXCEEDED for s in said if kind in str(s)), None)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return None if value is None else max(0.0, float(value))
    except (AttributeError, ValueError):
        return None


class LLMExecutor:
    """Runs requests for the batched LLM stage; thread-safe, shared by a process's workers."""

    def __init__(
        self,
        cfg: LLMConfig,
        base_url: str | None,
        cache: ResponseCache,
        *,
        redactor: prompts.Redactor | None = None,
        calibration: budget.TokenCalibration | None = None,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
        reply_chars: int = 1000,
        erased: Callable[[str, str], float | None] | None = None,
        budgets: TokenBudgets | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.budgets = budgets
        """The tenants' daily token budgets (None: none): a request is not sent while its
        tenant's is spent, and every answered request is charged to it."""
        self.erased = erased
        """The erasure lookup (`state.erasure.ErasureStore.cutoff`): answers to items of a
        subject erased after they were ingested are emitted but not cached."""
        self.reply_chars = reply_chars
        self.redactor = redactor
        self.calibration = calibration or budget.TokenCalibration()
        self.sleep = sleep
        self.rng = rng or random.Random()
        # `base_url` is the implicit "default" endpoint's; `llm.endpoints` name their own.
        self.endpoints = EndpointPool(
            cfg.endpoint_list(base_url),
            adaptive=cfg.adaptive_concurrency,
            connect=lambda e: openai.OpenAI(
                base_url=e.base_url,
                api_key=e.api_key().get_secret_value() or "not-needed",
                max_retries=0,
                timeout=cfg.timeout_s,
            ),
            latency_tolerance=cfg.latency_tolerance,
            latency_queue=cfg.latency_queue,
        )
        self.pool = ThreadPoolExecutor(self.endpoints.capacity, thread_name_prefix="llm")
        self._seq = 0
        self._seq_lock = threading.Lock()

    @property
    def limiter(self) -> Limiter:
        """The first endpoint's limiter (the only one without `llm.endpoints`)."""
        return self.endpoints.endpoints[0].limiter

    @property
    def capacity(self) -> int:
        """Requests the endpoints together may have in flight (the pool's threads)."""
        return self.endpoints.capacity

    def can_serve(self, task: TaskConfig) -> bool:
        """False while every endpoint that could answer `task` has its breaker open: the
        stage then holds the task's items (up to `max_held_items`)."""
        return self.endpoints.can_serve(task)

    def submit(self, task: TaskConfig, items: list[WorkItem]) -> Future[CallOutcome]:
        return self.pool.submit(self.run, task, items)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
        self.endpoints.close()

    def _request_id(self) -> str:
        with self._seq_lock:
            self._seq += 1
            return f"r{int(time.time() * 1000)}-{self._seq}"

    # -- the request path, on a pool thread ---------------------------------------------

    def run(self, task: TaskConfig, items: list[WorkItem]) -> CallOutcome:
        out = CallOutcome()
        spec = prompts.task_spec(task)
        fps = {
            i.item_id: prompts.item_fingerprint(task.name, task.model, i, spec.digest)
            for i in items
        }
        todo: list[WorkItem] = []
        hits: list[WorkItem] = []
        # Answers are cached under the model that gave them: a replay finds the primary's
        # answer first, else the fallback's, still marked as one (never as the primary's).
        fb = task.fallback.model if task.fallback else None
        hit_models: dict[str, str] = {}
        for item in items:
            cached = self.cache.lookup(fps[item.item_id])
            model = task.model
            if cached is None and fb is not None:
                cached = self.cache.lookup(prompts.item_fingerprint(task.name, fb, item))
                model = fb
            if cached is not None:
                answer, chunks = cached
                out.answered.append(
                    Answered(
                        item,
                        answer,
                        cached=True,
                        citations=tuple(chunks),
                        model=model,
                        fallback=model != task.model,
                    )
                )
                hits.append(item)
                hit_models[item.item_id] = model
            else:
                todo.append(item)
        if hits:
            # A replayed answer may come from another process's cache: record its reply here.
            answers = [(a.item, a.answer) for a in out.answered]
            answers = [(i, a) for i, a in answers if not self._erased(i)]
            replies = [reply_of(spec.conversation, i, a) for i, a in answers]
            summaries = [summary_of(spec.conversation, i, a) for i, a in answers]
            owners = _owners(answers, replies, summaries, {})
            self.cache.put_many(
                {}, [r for r in replies if r], [s for s in summaries if s], owners=owners
            )
            hit_cites = {a.item.item_id: list(a.citations) for a in out.answered if a.citations}
            for model in sorted(set(hit_models.values())):
                group = [i for i in hits if hit_models[i.item_id] == model]
                cites = {k: v for k, v in hit_cites.items() if hit_models[k] == model}
                served = Served(model, None, model != task.model)
                out.audits.append(
                    self._audit(
                        task,
                        group,
                        outcome="cache_hit",
                        cache_hit=True,
                        citations=cites,
                        served=served,
                    )
                )
        if not todo:
            return out
        if task.mode == "fanout":
            groups = [[i] for i in todo]
        else:
            limit = self._limit(task)[1]
            groups = prompts.split_for_budget(spec, todo, limit)
        for group in groups:
            tenant = group[0].tenant
            if self.budgets is not None and self.budgets.exhausted(tenant):
                reason = self.budgets.spent_reason(tenant)
                out.failed.extend(Failed(i, reason, over_budget=True) for i in group)
                continue
            self._ask(task, group, fps, out, reask=True)
        return out

    def _charge(
        self, items: list[WorkItem], usage: dict[str, int], request_id: str
    ) -> Audit | None:
        """Charge a request's tokens to its tenant's budget; the `budget_spent` activity
        record when this request spent the last of it (else None)."""
        if self.budgets is None:
            return None
        tenant = items[0].tenant
        tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        charge = self.budgets.charge(tenant, tokens)
        if charge is None:
            return None
        metrics.TENANT_TOKENS.labels(tenant).inc(tokens)
        metrics.TENANT_BUDGET_LEFT.labels(tenant).set(max(0, charge.allowance - charge.spent))
        if not charge.crossed:
            return None
        rules = self.budgets.budget(tenant)
        assert rules is not None
        log.warning(
            "tenant %r spent its daily token budget for %s: its work %s until the next UTC day",
            tenant,
            charge.day,
            "waits" if rules.on_spent == "wait" else "is dead-lettered",
        )
        return activity_record(
            "budget_spent",
            about=(tenant, charge.day, self.budgets.process[0]),
            tenant=tenant,
            at=time.time(),
            day=charge.day,
            budget=rules.tokens,
            allowance=charge.allowance,
            spent=charge.spent,
            process=self.budgets.process[0],
            action=rules.on_spent,
            request_id=request_id,
            resets_at=self.budgets.resets_at(),
        )

    def _ask(
        self,
        task: TaskConfig,
        items: list[WorkItem],
        fps: dict[str, str],
        out: CallOutcome,
        *,
        reask: bool,
    ) -> None:
        ids = [i.item_id for i in items]
        spec = prompts.task_spec(task)
        shown = [
            prepare(
                spec.conversation,
                prompts.scope_context(i, task.context),
                self.cache,
                self.reply_chars,
            )
            for i in items
        ]
        factor, limit = self._limit(task)
        prompt = prompts.assemble(
            spec,
            shown,
            redactor=self.redactor,
            limit_chars=limit,
            priority=task.context_priority,
        )
        messages = prompt.messages
        estimate = math.ceil(prompt.estimate * factor)
        for section, n in prompt.dropped.items():
            metrics.LLM_CONTEXT_DROPPED.labels(task.name, section).inc(n)
        if prompt.over_budget:
            metrics.LLM_OVER_BUDGET.labels(task.name, "estimate").inc()
        started = time.monotonic()
        try:
            content, usage, attempts, served = self._call_with_retries(
                task, messages, ids, estimate
            )
        except Exception as exc:
            attempts = getattr(exc, "attempts", self.cfg.max_attempts)
            reason = f"LLM request failed after {attempts} attempt(s): {exc}"
            kind = context_exceeded(exc) if isinstance(exc, openai.APIStatusError) else None
            oversized = kind is not None
            if isinstance(exc, openai.APIStatusError) and kind is not None:
                reason = (
                    f"prompt exceeds the model's context (HTTP 400 {kind}), even asked "
                    f"alone: {exc.message}"
                )
            smaller = oversized and len(items) > 1
            out.failed.extend(Failed(i, reason, retry_smaller=smaller) for i in items)
            out.audits.append(
                self._audit(
                    task,
                    items,
                    outcome="context_exceeded" if oversized else "error",
                    prompt=prompt,
                    estimate=estimate,
                    attempts=attempts,
                    latency_s=time.monotonic() - started,
                    error=str(exc)[:500],
                    served=getattr(exc, "served", None),
                )
            )
            return
        actual = usage["prompt_tokens"]
        self.calibration.observe(served.model, prompt.estimate, actual)
        # A fallback answer is cached under the fallback model's key (see `run`).
        keys = (
            fps
            if served.model == task.model
            else {i.item_id: prompts.item_fingerprint(task.name, served.model, i) for i in items}
        )
        if task.prompt_budget_tokens is not None and actual > task.prompt_budget_tokens:
            metrics.LLM_OVER_BUDGET.labels(task.name, "actual").inc()
        ok, bad = prompts.parse_answers(spec, content, ids)
        by_id = {i.item_id: i for i in items}
        # Persist before anything is emitted: this is what makes a replay free, and what puts
        # the replies into the memory of the session's next prompts. Items of a subject
        # erased while they were in flight are answered, not kept.
        kept = [(by_id[i], a) for i, a in ok.items() if not self._erased(by_id[i])]
        replies = [reply_of(spec.conversation, i, a) for i, a in kept]
        summaries = [summary_of(spec.conversation, i, a) for i, a in kept]
        cited = prompt.citations
        fresh = {i.item_id: keys[i.item_id] for i, _ in kept}
        self.cache.put_many(
            {fresh[i.item_id]: a for i, a in kept},
            [r for r in replies if r],
            [s for s in summaries if s],
            {fresh[i]: cited[i] for i in fresh if i in cited},
            owners=_owners(kept, replies, summaries, fresh),
        )
        out.answered.extend(
            Answered(
                by_id[i],
                a,
                cached=False,
                citations=tuple(cited.get(i, ())),
                model=served.model,
                endpoint=served.endpoint,
                fallback=served.fallback,
            )
            for i, a in ok.items()
        )
        audit = self._audit(
            task,
            items,
            outcome="ok" if not bad else "partial",
            prompt=prompt,
            estimate=estimate,
            attempts=attempts,
            latency_s=time.monotonic() - started,
            usage=usage,
            invalid=len(bad),
            served=served,
        )
        out.audits.append(audit)
        spent = self._charge(items, usage, audit["request_id"])
        if spent is not None:
            out.audits.append(spent.record)
        for item_id, reason in bad.items():
            if reask:
                # Ask again alone: a packed answer missing one item must not lose it.
                self._ask(task, [by_id[item_id]], fps, out, reask=False)
            else:
                out.failed.append(Failed(by_id[item_id], reason, raw_answer=content))

    def _erased(self, item: WorkItem) -> bool:
        """Whether a subject of `item` (its entity, its user) was erased after the item was
        ingested (its context came from before the erasure)."""
        if self.erased is None:
            return False
        for subject in {item.entity, item.profile_id}:
            cutoff = self.erased(item.tenant, subject)
            if cutoff is not None and item.ingest_ts <= cutoff:
                return True
        return False

    def _limit(self, task: TaskConfig) -> tuple[float, int | None]:
        """The model's calibration factor and the prompt size (characters) the budget allows."""
        factor = self.calibration.factor(task.model)
        if task.prompt_budget_tokens is None:
            return factor, None
        return factor, budget.limit_chars(task.prompt_budget_tokens, factor)

    def _call_with_retries(
        self, task: TaskConfig, messages: list[dict[str, str]], ids: list[str], estimate: int
    ) -> tuple[str | None, dict[str, int], int, Served]:
        """Send one request until it succeeds or its budget is spent; also says who served it.

        Each attempt goes to the endpoint `EndpointPool.acquire` picks (waiting while none
        can take it); a retry after a failure goes elsewhere, at once, if another endpoint
        can take it. An attempt counts against `max_attempts` unless its endpoint's circuit
        breaker is open after it fails (the endpoint is down: the request is held, not
        charged) or it was a 429 (those have their own, larger budget, `max_rate_limited`);
        the attempt timeout is ours. `estimate` (calibrated prompt tokens) is what the
        tokens-per-minute budget reserves, with 64 completion tokens per item; the reported
        usage is given back.
        """
        tokens = estimate + 64 * len(ids)
        counted = 0
        limited = 0
        sent = 0
        last: Exception | None = None
        failed_on: Endpoint | None = None
        served: Served | None = None
        began = time.monotonic()  # its place among waiting requests, kept across attempts
        while counted < self.cfg.max_attempts and limited < self.cfg.max_rate_limited:
            pick = self.endpoints.acquire(task, avoid=failed_on, priority=began)
            ep, limiter = pick.endpoint, pick.endpoint.limiter
            served = Served(pick.model, ep.name, pick.fallback)
            limiter.acquire(tokens)
            sent += 1
            started = time.monotonic()
            outcome = Outcome("other")
            try:
                raw = ep.client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
                    model=pick.model,
                    messages=messages,
                    temperature=task.temperature,
                    max_tokens=task.max_tokens * max(1, len(ids)),
                    response_format=prompts.response_format(prompts.task_spec(task), ids),
                    timeout=self.cfg.timeout_s,
                )
                resp = raw.parse()
                used = resp.usage
                usage = {
                    "prompt_tokens": used.prompt_tokens if used else 0,
                    "completion_tokens": used.completion_tokens if used else 0,
                }
                outcome = Outcome(
                    "ok",
                    latency_s=time.monotonic() - started,
                    tokens_used=usage["prompt_tokens"] + usage["completion_tokens"],
                    headers=raw.headers,
                )
                metrics.LLM_ENDPOINT_ANSWERS.labels(ep.name, str(pick.fallback).lower()).inc()
                return resp.choices[0].message.content, usage, sent, served
            except openai.RateLimitError as exc:
                outcome = Outcome("rate_limited", headers=exc.response.headers)
                last = RetryableError(f"429 rate limited: {exc.message}", _retry_after(exc))
                metrics.LLM_RATE_LIMITED.labels(task.name).inc()
                limited += 1
            except openai.InternalServerError as exc:
                outcome = Outcome("failure")
                last = RetryableError(f"{exc.status_code} server error: {exc.message}")
            except openai.APITimeoutError:
                outcome = Outcome("failure")
                last = RetryableError(f"timed out after {self.cfg.timeout_s:g} s")
            except openai.APIConnectionError as exc:
                outcome = Outcome("failure")
                last = RetryableError(f"connection error: {exc}")
            except openai.APIStatusError as exc:
                exc.attempts = sent  # type: ignore[attr-defined]
                exc.served = served  # type: ignore[attr-defined]
                raise
            finally:
                # A refused request keeps its slot through its wait: freeing it at once would
                # only let another waiting request be refused in its place.
                hold = outcome.kind == "rate_limited"
                limiter.release(outcome, tokens, keep_slot=hold)
                self.endpoints.observe(ep)
                if not hold:
                    self.endpoints.release(ep)
                self._publish_state()
            failed_on = ep if outcome.kind == "failure" else None
            if outcome.kind == "failure" and not limiter.breaker_open():
                counted += 1
            retry = counted < self.cfg.max_attempts and limited < self.cfg.max_rate_limited
            if hold:
                if retry:
                    # Repeated 429s back off further (counted attempts exclude them), so a
                    # request refused while the endpoint is full does not hammer it.
                    self.sleep(self._backoff(max(counted, limited, 1), last))
                limiter.free_slot()
                self.endpoints.release(ep)
                if retry:
                    continue
            if retry and failed_on is not None and self.endpoints.elsewhere(task, failed_on):
                continue  # another endpoint can take it now: fail over without waiting
            if retry:
                delay = self._backoff(max(counted, 1), last)
                log.warning(
                    "LLM attempt %d failed (%s); retrying in %.2f s",
                    sent,
                    last,
                    delay,
                    extra={"route": task.name, "items": len(ids)},
                )
                self.sleep(delay)
        assert last is not None
        last.attempts = sent  # type: ignore[attr-defined]
        last.served = served  # type: ignore[attr-defined]
        raise last

    def _publish_state(self) -> None:
        """The summed concurrency limits, and the best breaker state of the endpoints (open
        only when every endpoint's is)."""
        eps = self.endpoints.endpoints
        metrics.LLM_CONCURRENCY_LIMIT.set(sum(e.limiter.limit() for e in eps))
        levels = {e.name: _BREAKER_LEVEL[e.limiter.breaker.state] for e in eps}
        metrics.LLM_BREAKER_STATE.set(min(levels.values()))
        for name, level in levels.items():
            metrics.LLM_ENDPOINT_BREAKER_STATE.labels(name).set(level)

    def _backoff(self, attempt: int, err: Exception) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
        delay = self.rng.uniform(0, cap)  # full jitter
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cfg.backoff_max_s))
        return delay

    def _audit(
        self,
        task: TaskConfig,
        items: list[WorkItem],
        *,
        outcome: str,
        cache_hit: bool = False,
        prompt: prompts.Prompt | None = None,
        citations: dict[str, list[dict[str, Any]]] | None = None,
        estimate: int = 0,
        attempts: int = 0,
        latency_s: float = 0.0,
        usage: dict[str, int] | None = None,
        invalid: int = 0,
        error: str | None = None,
        served: Served | None = None,
    ) -> dict[str, Any]:
        """One audit record; `served` says which model and endpoint answered (or, for an
        error, were tried last; None: nothing was sent)."""
        usage = usage or {}
        messages = prompt.messages if prompt else None
        prompt_redactions = prompt.redactions if prompt else 0
        return {
            "type": "audit",
            "request_id": self._request_id(),
            "tenant": items[0].tenant,
            "event_ids": sorted({e for i in items for e in i.event_ids}),
            "item_ids": [i.item_id for i in items],
            "route": task.name,
            "model": served.model if served else task.model,
            "endpoint": served.endpoint if served else None,
            "fallback": served.fallback if served else False,
            "mode": task.mode,
            "batch_size": len(items),
            "prompt_fingerprint": (
                prompts.messages_fingerprint(task.model, messages, prompts.task_spec(task).digest)
                if messages
                else None
            ),
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "prompt_tokens_estimate": estimate,
            "prompt_budget_tokens": task.prompt_budget_tokens,
            "over_budget": prompt.over_budget if prompt else False,
            "context_dropped": dict(prompt.dropped) if prompt else {},
            "context_truncated": dict(prompt.truncated) if prompt else {},
            "citations": citations
            if citations is not None
            else (prompt.citations if prompt else {}),
            "completion_tokens": usage.get("completion_tokens", 0),
            "latency_ms": round(latency_s * 1000, 1),
            "attempts": attempts,
            "cache_hit": cache_hit,
            "redactions": sum(i.redactions for i in items) + prompt_redactions,
            "prompt_redactions": prompt_redactions,
            "invalid_items": invalid,
            "outcome": outcome,
            "error": error,
            "ts": time.time(),
        }


def _owners(
    answers: list[tuple[WorkItem, dict[str, Any]]],
    replies: list[Reply | None],
    summaries: list[Summary | None],
    fingerprints: dict[str, str],
) -> list[Owner]:
    """The `ResponseCache` owner entries of what is written for `answers`: each answer (by
    its fingerprint in `fingerprints`), reply and summary under the item's entity and user
    (a summary also under the users of the turns it folds), so an erasure of any of them
    finds it."""
    out: list[Owner] = []
    for (item, _), reply, summary in zip(answers, replies, summaries, strict=True):
        subjects = {item.entity, item.profile_id}
        keys = [fingerprints[item.item_id].encode()] if item.item_id in fingerprints else []
        if reply is not None:
            keys.append(reply.key())
        if summary is not None:
            keys.append(summary.key())
            subjects.update(t["user"] for t in item.data.get("turns", ()) if t.get("user"))
        out.extend((k, item.tenant, s) for k in keys for s in sorted(subjects))
    return out


_executors: dict[tuple[Any, ...], LLMExecutor] = {}
_exec_lock = threading.Lock()


def shared_executor(
    cfg: LLMConfig,
    base_url: str | None,
    cache_path: str,
    peers: tuple[str, ...] = (),
    redactor: prompts.Redactor | None = None,
    reply_chars: int = 1000,
    erasures: str | None = None,
    budgets: TokenBudgets | None = None,
) -> LLMExecutor:
    """The process-wide executor for this config (one pool, so one concurrency cap).

    `peers` are other processes' caches, consulted read-only on a miss (`ResponseCache`).
    `redactor` (the deployment's, from `settings.redaction`; None: disabled) redacts every
    string that enters a prompt; it must compare equal by configuration (part of the key).
    `reply_chars` cuts the replies put into prompts' memory (`memory.max_chars_per_turn`).
    `erasures` is this process's erasure table (its path), when the deployment has erasures.
    `budgets` are the tenants' daily token budgets (`state.budgets.shared_budgets`).
    """
    key = (cfg, base_url, cache_path, peers, redactor, reply_chars, erasures, id(budgets))
    with _exec_lock:
        ex = _executors.get(key)
        if ex is None:
            cache = ResponseCache(cache_path, cfg.cache_ttl_s, peers=peers)
            erased = None
            if erasures is not None:
                path = erasures

                def erased(tenant: str, subject: str) -> float | None:
                    return open_erasures(path).cutoff(tenant, subject)

                cache.erased = erased
            ex = LLMExecutor(
                cfg,
                base_url,
                cache,
                redactor=redactor,
                reply_chars=reply_chars,
                erased=erased,
                budgets=budgets,
            )
            _executors[key] = ex
        return ex
