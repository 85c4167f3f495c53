"""Cost of assembling a prompt (redaction everywhere, budget) and how well the budget holds.

    python -m bench.prompts [--repeat 500] [--requests 700] [--quick]

Part 1, in-process: µs to build one request, the executor's old prompt builder (a verbatim
copy of `build_messages` before this change: no redaction, no budget) and today's
`build_messages`, against `prompts.assemble` with the deployment's `RegexRedactor` (all
kinds) over every string of data and context, without and with a budget. Two request
shapes: `typical`, 8 chat items with 8 short memory turns and a small profile each (the
shape the pipeline builds today), and `rich`, 1-4 items with profile, summary, up to 12
turns and 6 knowledge chunks in varied languages (`support.contexts`), where the
1500-token budget trims nearly every request. Each figure is the best of 5 rounds.

Part 2, through the LLM simulator over HTTP (its token count differs from the client's
estimate): the share of requests whose reported prompt tokens exceed the budget after warm-up,
calibrated (`TokenCalibration`) and uncalibrated (the raw estimate), and how much of the
budget the prompts use.

The last line is one JSON object: `typical_old_us`, `typical_redact_us`,
`typical_budget_us`, `rich_old_us`, `rich_redact_us`, `rich_budget_us`,
`calibrated_over_share`, `uncalibrated_over_share`, `calibrated_mean_use`,
`uncalibrated_mean_use`, `factor`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.records import WorkItem
from inference import budget, prompts
from llmsim import LLMSimulator, SimConfig
from operators.redact import RegexRedactor
from state.stores import close_all
from support.contexts import PII_KINDS, budget_run, rich_requests

SCHEMA = "chat_reply"
BUDGET = 1500
FACTOR = 2.8  # about what the calibration learns for the rich requests (part 2)


def typical_requests(count: int, seed: int = 3) -> list[list[WorkItem]]:
    rng = random.Random(seed)
    texts = ["How do I reset my password?", "My invoice is wrong, mail me at [EMAIL]", "Hello!"]

    def item(r: int, k: int) -> WorkItem:
        memory = [{"role": "user", "text": rng.choice(texts), "ts": 1.7e9 + t} for t in range(8)]
        return WorkItem(
            f"c-{r}-{k}", (f"c-{r}-{k}",), "acme", f"s-{k}", f"u-{k}", SCHEMA, "chat[0]@1",
            {"text": rng.choice(texts), "role": "user"},
            {"memory": memory, "profile": {"name": f"Customer {k}", "plan": "pro",
                                           "language": "de"}},
            0.0,
        )  # fmt: skip

    return [[item(r, k) for k in range(8)] for r in range(count)]


def old_build_messages(schema_name: str, items: list[WorkItem]) -> list[dict[str, str]]:
    """`prompts.build_messages` as the executor called it before prompt assembly (verbatim,
    with a `json.dumps` per call): the baseline."""
    body = json.dumps(
        [prompts.item_payload(i) for i in items], separators=(",", ":"), ensure_ascii=False
    ).replace("<", "\\u003c")
    return [
        {"role": "system", "content": prompts.system_prompt(schema_name)},
        {"role": "user", "content": f"<events>\n{body}\n</events>"},
    ]


def per_request_us(build: Callable[[list[WorkItem]], Any], reqs: list[list[WorkItem]]) -> float:
    """Mean µs per request over `reqs`, the best of 5 rounds (the cores may be shared)."""
    for items in reqs[:20]:
        build(items)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for items in reqs:
            build(items)
        best = min(best, time.perf_counter() - started)
    return best / len(reqs) * 1e6


def build_costs(reqs: list[list[WorkItem]]) -> dict[str, float]:
    redactor = RegexRedactor(PII_KINDS)
    limit = budget.limit_chars(BUDGET, FACTOR)
    return {
        "old": per_request_us(lambda items: old_build_messages(SCHEMA, items), reqs),
        "plain": per_request_us(lambda items: prompts.build_messages(SCHEMA, items), reqs),
        "redact": per_request_us(
            lambda items: prompts.assemble(SCHEMA, items, redactor=redactor), reqs
        ),
        "budget": per_request_us(
            lambda items: prompts.assemble(SCHEMA, items, redactor=redactor, limit_chars=limit),
            reqs,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=500, help="requests built per case")
    p.add_argument("--requests", type=int, default=700, help="requests sent per variant")
    p.add_argument("--warmup", type=int, default=100, help="requests left out as warm-up")
    p.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.requests, args.warmup = 200, 250, 50
    if args.repeat < 20 or args.requests <= args.warmup:
        p.error("--repeat must be >= 20 and --requests larger than --warmup")

    out: dict[str, Any] = {}
    for shape, reqs in (
        ("typical", typical_requests(args.repeat)),
        ("rich", rich_requests(11, args.repeat)),
    ):
        costs = build_costs(reqs)
        items = sum(len(r) for r in reqs) / len(reqs)
        print(
            f"{shape:8s} ({items:.1f} items/request): old build_messages {costs['old']:6.1f} µs, "
            f"now {costs['plain']:6.1f}; assemble with redaction {costs['redact']:7.1f}, "
            f"+ budget {costs['budget']:7.1f} µs/request "
            f"(+{costs['budget'] - costs['old']:.1f} µs, "
            f"{(costs['budget'] - costs['old']) / items:.1f} µs/item)"
        )
        out[f"{shape}_old_us"] = round(costs["old"], 1)
        out[f"{shape}_redact_us"] = round(costs["redact"], 1)
        out[f"{shape}_budget_us"] = round(costs["budget"], 1)

    tmp = Path(tempfile.mkdtemp(prefix="bench-prompts-"))
    try:
        with LLMSimulator(SimConfig(latency_ms=0, max_concurrency=64)) as sim:
            runs = {
                name: budget_run(
                    sim.base_url,
                    cal,
                    tmp / name,
                    budget=BUDGET,
                    requests=args.requests,
                    warmup=args.warmup,
                )
                for name, cal in (
                    ("calibrated", budget.TokenCalibration()),
                    ("uncalibrated", budget.FixedCalibration(1.0)),
                )
            }
    finally:
        close_all()
        shutil.rmtree(tmp, ignore_errors=True)
    for name, r in runs.items():
        print(
            f"{name:12s}: {r['over']}/{r['measured']} requests over the {BUDGET}-token budget "
            f"after {args.warmup} of warm-up ({r['over_share']:.2%}; {r['warmup_over']} during "
            f"warm-up), prompts use {r['mean_use']:.0%} of it on average, "
            f"{r['trimmed_share']:.0%} trimmed, factor {r['factor']:.2f}"
        )
        out[f"{name}_over_share"] = round(r["over_share"], 4)
        out[f"{name}_mean_use"] = round(r["mean_use"], 3)
    out["factor"] = round(runs["calibrated"]["factor"], 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
