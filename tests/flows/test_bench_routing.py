"""`python -m bench.routing --quick` as a subprocess: the compiled conditional rules route
every event as the hand-written `if` chain does, the kind table as the kind's default."""

from __future__ import annotations

import pytest

from support.harness import run_bench


@pytest.mark.timeout(300)
def test_bench_routing_quick_run() -> None:
    figures, lines = run_bench("bench.routing", "--quick")
    assert figures["events"] == 5000 and figures["alerts"] == 50
    assert figures["mismatches"] == 0 and figures["kind_mismatches"] == 0
    routes = figures["routes"]
    assert sum(routes.values()) == figures["events"]
    for route in ("none", "chat_reply", "triage", "fraud_check", "fraud_check+triage", "guard"):
        assert routes[route] > 0, route
    assert figures["kind_us"] > 0 and figures["conditional_us"] > 0  # figures, not compared
    assert any("kind-only table" in line for line in lines)
