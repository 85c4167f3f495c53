"""What tenants' daily token budgets cost, and how far a spent budget overshoots.

    python -m bench.budgets [--items 600] [--concurrency 8] [--latency-ms 20] [--repeats 3]

Runs the LLM stage (`operators.llm.call_llm` under `bytewax.testing.run_main`, the real
executor, the bundled simulator over HTTP through the `openai` client, one item per request
so every item is a request) over `--items` items of one tenant, three ways in one process:

- `baseline`: no budgets;
- `budgeted`: the tenant has a budget it never reaches (the checks and the persisted spend
  of every request, `state.budgets`): the ratio of its time to the baseline's is the cost;
- `spent`: the budget is a tenth of what the baseline run spent, `on_budget_spent =
  "dead_letter"`: how many tokens past the budget the requests already in flight add
  (at most `--concurrency` requests' worth), and that every item is answered or
  dead-lettered.

Each timed way runs `--repeats` times (fresh stores); the median is reported. The last line
is one JSON object with `items`, `concurrency`, `baseline_s`, `budgeted_s`, `ratio`,
`tokens_per_request`, `budget`, `spent`, `overshoot_tokens`, `overshoot_requests`,
`answered`, `dead_lettered`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from config.models import LLMConfig, TaskConfig
from core.records import WorkItem
from inference.client import LLMExecutor
from llmsim import LLMSimulator, SimConfig
from operators.llm import call_llm
from state.budgets import Budget, TokenBudgets
from state.stores import ResponseCache, StoreLayout, close_all

TENANT = "bench"


def items(n: int) -> list[WorkItem]:
    return [
        WorkItem(
            f"i{k}",
            (f"i{k}",),
            TENANT,
            f"s{k}",
            "u1",
            "chat_reply",
            "x",
            {"text": f"How do I reset the password of account {k}?"},
            {},
            0.0,
        )
        for k in range(n)
    ]


def run_stage(
    work: list[WorkItem], cfg: LLMConfig, base_url: str, budget: Budget | None
) -> dict[str, Any]:
    """One run on fresh stores: seconds, answers, dead letters and the tokens spent."""
    with tempfile.TemporaryDirectory() as tmp:
        layout = StoreLayout(Path(tmp))
        budgets = None
        if budget is not None:
            budgets = TokenBudgets({TENANT: budget}, layout.budgets, layout.peer_budgets)
        pool = LLMExecutor(cfg, base_url, ResponseCache(str(layout.llm_cache)), budgets=budgets)
        answers: list[Any] = []
        audit: list[Any] = []
        errs: list[Any] = []
        flow = Dataflow("bench_budgets")
        out = call_llm(
            "llm", op.input("in", flow, TestingSource(work, batch_size=50)), cfg, lambda: pool
        )
        op.output("answers", out.answers, TestingSink(answers))
        op.output("audit", out.audit, TestingSink(audit))
        op.output("errs", out.errs, TestingSink(errs))
        started = time.perf_counter()
        run_main(flow)
        seconds = time.perf_counter() - started
        pool.close()
        close_all()
    calls = [a.record for a in audit if a.record.get("type") == "audit"]
    spent = sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)
    return {
        "seconds": seconds,
        "answered": len(answers),
        "dead": len(errs),
        "requests": len(calls),
        "spent": spent,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    task = TaskConfig(name="chat_reply", schema_name="chat_reply", model="sim-1", max_batch=1)
    cfg = LLMConfig(
        tasks=(task,), routes=(), concurrency=args.concurrency, adaptive_concurrency=False
    )
    work = items(args.items)
    with LLMSimulator(SimConfig(latency_ms=args.latency_ms, seed=7)) as sim:
        base: list[dict[str, Any]] = []
        budgeted: list[dict[str, Any]] = []
        for _ in range(args.repeats):  # interleaved: drift of a noisy machine hits both
            base.append(run_stage(work, cfg, sim.base_url, None))
            budgeted.append(run_stage(work, cfg, sim.base_url, Budget(10**12)))
        per_request = base[0]["spent"] / max(1, base[0]["requests"])
        limit = max(1, base[0]["spent"] // 10)
        spent = run_stage(work, cfg, sim.base_url, Budget(limit, "dead_letter"))
    assert all(r["answered"] == args.items and r["dead"] == 0 for r in base + budgeted)
    assert spent["answered"] + spent["dead"] == args.items, "an item was lost"
    base_s = statistics.median(r["seconds"] for r in base)
    budget_s = statistics.median(r["seconds"] for r in budgeted)
    over = spent["spent"] - limit
    print(
        f"items {args.items}, one request each, concurrency {args.concurrency}, "
        f"simulator latency {args.latency_ms:.0f} ms, median of {args.repeats}"
    )
    print(f"  baseline (no budgets)      {base_s:8.3f} s")
    print(f"  budgeted (never reached)   {budget_s:8.3f} s   ratio {budget_s / base_s:.3f}")
    print(
        f"  spent: budget {limit} tokens ({per_request:.0f} per request): spent "
        f"{spent['spent']}, overshoot {over} tokens = {over / per_request:.1f} requests; "
        f"answered {spent['answered']}, dead-lettered {spent['dead']}"
    )
    print(
        json.dumps(
            {
                "items": args.items,
                "concurrency": args.concurrency,
                "baseline_s": round(base_s, 3),
                "budgeted_s": round(budget_s, 3),
                "ratio": round(budget_s / base_s, 3),
                "tokens_per_request": round(per_request, 1),
                "budget": limit,
                "spent": spent["spent"],
                "overshoot_tokens": over,
                "overshoot_requests": round(over / per_request, 2),
                "answered": spent["answered"],
                "dead_lettered": spent["dead"],
            }
        )
    )


if __name__ == "__main__":
    main()
