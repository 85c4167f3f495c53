"""LLM limits are the deployment's: each process of a `-i/-a` cluster takes its share."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.models import ConfigError, LLMConfig
from runtime.process import process_position


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shares_add_up_to_the_deployment_limits(count: int) -> None:
    cfg = LLMConfig(concurrency=8, rpm_limit=1000, tpm_limit=90_001)
    shares = [cfg.process_share(i, count) for i in range(count)]
    assert sum(s.concurrency for s in shares) == 8
    assert sum(s.rpm_limit or 0 for s in shares) == 1000
    assert sum(s.tpm_limit or 0 for s in shares) == 90_001
    assert max(s.concurrency for s in shares) - min(s.concurrency for s in shares) <= 1


def test_one_process_keeps_the_config_and_no_budget_stays_none() -> None:
    cfg = LLMConfig(concurrency=8)
    assert cfg.process_share(0, 1) is cfg
    half = cfg.process_share(1, 2)
    assert (half.concurrency, half.rpm_limit, half.tpm_limit) == (4, None, None)
    assert half.tasks == cfg.tasks


def test_a_limit_too_small_to_share_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"llm.concurrency = 2 cannot be shared by 3"):
        LLMConfig(concurrency=2).process_share(2, 3)  # the third process would get none
    with pytest.raises(ConfigError, match=r"llm\.rpm_limit"):
        LLMConfig(concurrency=8, rpm_limit=1).process_share(1, 2)


def test_process_position_from_arguments_and_environment(tmp_path: Path) -> None:
    assert process_position(["x"], {}) == (0, 1)
    assert process_position(["x", "-w", "2"], {}) == (0, 1)
    argv = ["x", "-i", "2", "-a", "a:1;b:2;c:3"]
    assert process_position(argv, {}) == (2, 3)
    assert process_position(["x", "--process-id=1", "--addresses=a:1;b:2"], {}) == (1, 2)
    env = {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": "a:1;b:2"}
    assert process_position(["x"], env) == (1, 2)
    hosts = tmp_path / "hosts"
    hosts.write_text("a:1\nb:2\n\nc:3\n")
    env = {
        "BYTEWAX_POD_NAME": "cs-2",
        "BYTEWAX_STATEFULSET_NAME": "cs",
        "BYTEWAX_HOSTFILE_PATH": str(hosts),
    }
    assert process_position(["x"], env) == (2, 3)
