"""Fault scenarios: prove that nothing is lost under crashes, stops, outages and bad input.

    python -m bench.faults                 # full scenarios (long: 100k-event kill storm, 60 s
                                           # stalls and outages, 1M events of bounded state)
    python -m bench.faults --quick         # short variants (also run by tests/e2e/test_faults.py)
    python -m bench.faults --quick storm fuzz   # only some scenarios

Each scenario runs the real flow as a subprocess (`python -m bytewax.run ... -r DIR -s 1 -b 0`)
against a fresh Tansu broker and the LLM simulator, injects its fault, then drains every
output topic and the simulator's request log through `support.harness.check`. One JSON
object is printed per scenario; the last line is one JSON object
`{scenario: {"lost", "duplicates", "unseen", "inconsistent", "repeated_llm_requests", ...}}`.
The exit status is 1 if any scenario lost an event or failed one of its checks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from support.faults import SCENARIOS, run_scenario


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short variants (a few minutes in all)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    args = p.parse_args(argv)
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    workdir = Path(tempfile.mkdtemp(prefix="faults-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            try:
                figures = run_scenario(name, quick=args.quick, workdir=workdir)
            except Exception as exc:  # a harness failure is a failed scenario, not a crash
                figures = {
                    "passed": False,
                    "failures": [f"{type(exc).__name__}: {exc}"],
                    "lost": -1,
                }
            results[name] = figures
            print(json.dumps({name: figures}, default=str), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    keys = ("lost", "duplicates", "unseen", "inconsistent", "repeated_llm_requests")
    summary = {
        n: {**{k: r.get(k, 0) for k in keys}, "passed": r.get("passed", False)}
        for n, r in results.items()
    }
    print(json.dumps(summary), flush=True)
    failed = [n for n, r in results.items() if not r.get("passed") or r.get("lost", 0) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
