"""Sensitive data, measured: the redactor on a generated corpus, then PII through the pipeline.

    python -m bench.pii [--records 10000] [--seed 7] [--no-pipeline]

1. Generates `--records` records (`support.pii_corpus`: chats, business events, profile
   updates, knowledge documents, with ground-truth PII spans and near-misses).
2. Runs `RegexRedactor.find` (all kinds) over every string of every record: per kind, a
   found span is a true positive when it covers a ground-truth span of its kind and nothing
   alphanumeric besides; recall and precision per kind. Times the redactor per record, and
   the redactor before this change (a verbatim copy, `legacy_redact`), in the same process.
3. Runs the whole flow on the records (file input: chats and business events as sources,
   profile updates as `input.profiles`, documents as `input.knowledge`; chats and business
   events go to a task with profile and knowledge context) as production launches it
   (`python -m bytewax.run "flows.pipeline:build('<config>')"`), against the LLM simulator
   (`llmsim`, in this process, no latency), and searches every prompt the simulator received,
   the flow's log, every output file but the dead letters, the recovery snapshots (`-r`,
   1 s epochs) and the stores for each ground-truth value, as
   written and normalized (lower case, only letters, digits and "@": a card or phone number
   without its separators); IP addresses are compared as parsed addresses.

The last line is one JSON object: `records`, `recall_min`, `precision_min`,
`recall_<kind>`, `precision_<kind>`, `redact_us_per_record`, `legacy_redact_us_per_record`,
`pii_in_prompts`, `pii_in_logs`, `pii_in_outputs`, `pii_in_dead_letters`, `pii_in_state`
(the recovery snapshots: memory, windows, pending LLM work), `pii_in_reference_stores` (the
profile store and knowledge index, which keep reference data as given), `prompts`,
`truth_values`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from operators.redact import RegexRedactor
from support.pii_corpus import KINDS, TENANT, CorpusRecord, Finder, Truth, corpus, jsonl

REPO = Path(__file__).resolve().parents[1]

# --- the redactor before this change (verbatim), for the timing baseline ------------------

_L_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_L_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_L_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_L_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_L_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+?\d{1,3}[ .-]?)?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]\d{3,4}\b"
    r"(?![ .-]?\d)"
)
_L_IP = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _iban(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    try:
        number = int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4]))
    except ValueError:
        return False
    return number % 97 == 1


def legacy_redact(text: str) -> str:
    """`RegexRedactor.redact` (all kinds) as it was before validators judged candidates."""
    if re.search(r"[\d@]", text) is None:
        return text

    def sub(pattern: re.Pattern[str], label: str, check: Any = None) -> None:
        nonlocal text
        text = pattern.sub(
            lambda m: m.group(0) if check is not None and not check(m.group(0)) else label, text
        )

    if "@" in text:
        sub(_L_EMAIL, "[EMAIL]")
    sub(_L_IBAN, "[IBAN]", _iban)
    sub(_L_CARD, "[CARD]", lambda s: _luhn(re.sub(r"[ -]", "", s)))
    if "-" in text:
        sub(_L_SSN, "[SSN]")
    if "." in text:
        sub(_L_IP, "[IP]")
    sub(_L_PHONE, "[PHONE]")
    return text


# --- span-level measurement -----------------------------------------------------------------


def measure(records: list[CorpusRecord], redactor: RegexRedactor) -> dict[str, Counter[str]]:
    """True positives, false negatives and false positives per kind."""
    tp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    for c in records:
        by_path: dict[tuple[str, ...], list[Truth]] = {}
        for t in c.truth:
            by_path.setdefault(t.path, []).append(t)
        for path, s in c.strings():
            truths = by_path.get(path, [])
            used: set[int] = set()
            for a, b, kind in redactor.find(s):
                hit = next(
                    (
                        j
                        for j, t in enumerate(truths)
                        if j not in used
                        and t.kind == kind
                        and a <= t.start
                        and b >= t.end
                        and not any(ch.isalnum() for ch in s[a : t.start] + s[t.end : b])
                    ),
                    None,
                )
                if hit is None:
                    fp[kind] += 1
                else:
                    used.add(hit)
                    tp[kind] += 1
            for j, t in enumerate(truths):
                if j not in used:
                    fn[t.kind] += 1
    return {"tp": tp, "fn": fn, "fp": fp}


def per_record_us(fn: Any, records: list[CorpusRecord]) -> float:
    """Mean µs to run `fn` over every string of a record, the best of 3 rounds."""
    texts = [[s for _, s in c.strings()] for c in records]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for strings in texts:
            for s in strings:
                fn(s)
        best = min(best, time.perf_counter() - t0)
    return best / len(records) * 1e6


# --- PII search in prompts, logs and outputs --------------------------------------------------


TASKS = """
routes = [
  {{ kind = "chat", task = "chat_reply" }},
  {{ kind = "business", task = "business_review" }},
  {{ kind = "alert", task = "none" }},
  {{ kind = "metric", task = "none" }},
]

[[llm.tasks]]
name = "chat_reply"
schema_name = "chat_reply"
knowledge = {{ top_k = 3 }}

[[llm.tasks]]
name = "business_review"
schema_name = "chat_reply"
"""


def _bytes_text(root: Path) -> str:
    """Every file under `root` (recovery snapshots, stores) as text, for the PII search."""
    return "\n".join(
        f.read_bytes().decode("utf-8", errors="replace")
        for f in sorted(root.rglob("*"))
        if f.is_file()
    )


def run_pipeline(records: list[CorpusRecord], work: Path) -> dict[str, Any]:
    """The flow on the records against the simulator; the prompts, log and output texts."""
    from llmsim import LLMSimulator, SimConfig

    for place in ("chat", "business", "profile", "knowledge"):
        (work / f"{place}.jsonl").write_bytes(jsonl(records, place))
    # Malformed records with PII: dead letters keep their bytes (not searched).
    with (work / "chat.jsonl").open("ab") as f:
        f.write(b'{"text": "call me on +1 415 555 0100", broken\n')
    with LLMSimulator(SimConfig(latency_ms=0, max_concurrency=256)) as sim:
        cfg = work / "pii.toml"
        cfg.write_text(
            f"""
[app]
name = "bench-pii"
profile = "dev"
[input]
kind = "file"
sources = [
  {{ name = "chat", path = "{work / "chat.jsonl"}", adapter = "chat_message" }},
  {{ name = "business", path = "{work / "business.jsonl"}", adapter = "business_event" }},
]
profiles = {{ name = "profiles", path = "{work / "profile.jsonl"}" }}
knowledge = {{ name = "knowledge", path = "{work / "knowledge.jsonl"}" }}
[output]
kind = "file"
dir = "{work / "out"}"
[stores]
dir = "{work / "stores"}"
[llm]
base_url = "{sim.base_url}"
concurrency = 16
{TASKS.format()}"""
        )
        recovery = work / "recovery"
        recovery.mkdir()
        from bytewax.recovery import init_db_dir

        init_db_dir(recovery, 1)
        started = time.perf_counter()
        flow = f"flows.pipeline:build('{cfg}')"
        proc = subprocess.run(
            [sys.executable, "-m", "bytewax.run", flow, "-r", str(recovery), "-s", "1", "-b", "0"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "OPENAI_API_KEY": "sim-key"},
            timeout=1800,
        )
        seconds = time.perf_counter() - started
        requests = sim.requests()
    if proc.returncode != 0:
        msg = f"the flow exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    prompts = ["\n".join(m["content"] for m in r["messages"]) for r in requests]
    outputs = {
        f.name: f.read_text(errors="replace")
        for f in sorted((work / "out").glob("*.jsonl"))
        if not f.name.startswith("dead_letters")
    }
    dead = "".join(
        f.read_text(errors="replace") for f in (work / "out").glob("dead_letters*.jsonl")
    )
    return {
        "prompts": prompts,
        "state": _bytes_text(work / "recovery"),
        "stores": _bytes_text(work / "stores"),
        "log": proc.stdout + proc.stderr,
        "outputs": outputs,
        "dead": dead,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pii", description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-pipeline", action="store_true", help="only measure the redactor")
    args = p.parse_args(argv)
    records = corpus(args.records, args.seed, now=time.time())
    redactor = RegexRedactor(KINDS)
    m = measure(records, redactor)
    result: dict[str, Any] = {"records": len(records)}
    print(f"{len(records)} records, {sum(len(c.truth) for c in records)} PII values")
    for kind in KINDS:
        tp, fn, fp = m["tp"][kind], m["fn"][kind], m["fp"][kind]
        recall = tp / (tp + fn) if tp + fn else 1.0
        precision = tp / (tp + fp) if tp + fp else 1.0
        print(
            f"  {kind:12s} recall {recall:.4f} precision {precision:.4f} ({tp} tp {fn} fn {fp} fp)"
        )
        result[f"recall_{kind}"] = round(recall, 4)
        result[f"precision_{kind}"] = round(precision, 4)
    result["recall_min"] = min(result[f"recall_{k}"] for k in KINDS)
    result["precision_min"] = min(result[f"precision_{k}"] for k in KINDS)
    new_us = per_record_us(redactor.redact, records)
    old_us = per_record_us(legacy_redact, records)
    print(f"redactor: {new_us:.1f} µs/record (before this change: {old_us:.1f} µs/record)")
    result["redact_us_per_record"] = round(new_us, 1)
    result["legacy_redact_us_per_record"] = round(old_us, 1)
    if not args.no_pipeline:
        truth = [t for c in records for t in c.truth]
        finder = Finder(truth)
        with tempfile.TemporaryDirectory(prefix="bench-pii-") as tmp:
            run = run_pipeline(records, Path(tmp))
        in_prompts: set[str] = set()
        for prompt in run["prompts"]:
            in_prompts |= finder.found(prompt)
        in_log = finder.found(run["log"])
        in_outputs = {name: len(finder.found(text)) for name, text in run["outputs"].items()}
        in_dead = len(finder.found(run["dead"]))
        in_state = finder.found(run["state"])
        in_stores = len(finder.found(run["stores"]))
        print(
            f"pipeline ({run['seconds']:.1f} s, {len(run['prompts'])} prompts): PII values in "
            f"prompts {len(in_prompts)}, in the log {len(in_log)}, in outputs {in_outputs}; "
            f"in dead letters (original bytes, kept for reprocessing) {in_dead}; in the "
            f"recovery snapshots (memory, windows, pending work) {len(in_state)}; in the "
            f"reference stores (profiles and knowledge as given, not encrypted) {in_stores}"
        )
        for v in sorted(in_prompts | in_log | in_state)[:20]:
            print(f"  leaked: {v}")
        result.update(
            {
                "pii_in_prompts": len(in_prompts),
                "pii_in_logs": len(in_log),
                "pii_in_outputs": sum(in_outputs.values()),
                "pii_in_dead_letters": in_dead,
                "pii_in_state": len(in_state),
                "pii_in_reference_stores": in_stores,
                "prompts": len(run["prompts"]),
                "truth_values": len(truth),
                "tenant": TENANT,
            }
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
