"""A short run of `python -m bench.decode` as a subprocess: the compiled presets and the frozen
legacy decoder give identical outputs, and the declared nested adapter decodes every order.
No timed assertions: only the correctness fields are checked."""

from __future__ import annotations

from support.harness import run_bench


def test_short_run_is_correct() -> None:
    result, lines = run_bench("bench.decode", "--records", "2000", "--rounds", "1")
    assert result["records"] == 2000
    assert result["identical"] is True
    # support.workload.mixed: 5 % malformed records, each a dead letter.
    assert (result["oks"], result["dead_letters"]) == (1900, 100)
    assert result["custom_records"] == result["custom_oks"] == 2000
    for key in ("legacy_per_s", "presets_per_s", "ratio", "custom_per_s"):
        assert result[key] > 0, key
    assert any(line.startswith("compiled presets") for line in lines)
