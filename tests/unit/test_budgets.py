"""Daily token budgets (`state.budgets`): a restart keeps the day's spend, the processes of a
deployment share what is left, days roll over at UTC midnight and old days are forgotten."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from state.budgets import Budget, TokenBudgets, next_day, utc_day
from state.stores import StoreLayout, close_all, open_store

DAY1 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC).timestamp()
DAY2 = datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _close() -> object:
    yield
    close_all()


def budgets(root: Path, process: tuple[int, int], clock: Clock, tokens: int = 1000) -> TokenBudgets:
    layout = StoreLayout(root, process[0])
    return TokenBudgets(
        {"acme": Budget(tokens)}, layout.budgets, layout.peer_budgets, process, clock
    )


def test_days_are_utc() -> None:
    assert utc_day(DAY1) == "2026-12-03" and utc_day(DAY2) == "2026-12-04"
    assert next_day(DAY1) == datetime(2026, 12, 4, tzinfo=UTC).timestamp()


def test_a_restart_keeps_the_days_spend(tmp_path: Path) -> None:
    clock = Clock(DAY1)
    first = budgets(tmp_path, (0, 1), clock)
    assert first.charge("acme", 700) is not None
    close_all()
    again = budgets(tmp_path, (0, 1), clock)
    assert not again.exhausted("acme")
    charge = again.charge("acme", 300)
    assert charge is not None and (charge.spent, charge.exhausted, charge.crossed) == (
        1000,
        True,
        True,
    )
    close_all()
    # Spent before the restart: still spent, and the crossing is not reported again.
    third = budgets(tmp_path, (0, 1), clock)
    assert third.exhausted("acme")
    late = third.charge("acme", 5)
    assert late is not None and late.exhausted and not late.crossed


def test_the_next_utc_day_starts_afresh(tmp_path: Path) -> None:
    clock = Clock(DAY1)
    b = budgets(tmp_path, (0, 1), clock)
    b.charge("acme", 5000)
    assert b.exhausted("acme") and b.resets_at() == next_day(DAY1)
    clock.now = DAY2
    assert not b.exhausted("acme")
    charge = b.charge("acme", 10)
    assert charge is not None and (charge.day, charge.spent) == ("2026-12-04", 10)


def allowances(processes: list[TokenBudgets]) -> list[int]:
    """What each process may spend of acme's day (read by charging nothing)."""
    out = []
    for b in processes:
        c = b.charge("acme", 0)
        assert c is not None
        out.append(c.allowance)
    return out


def test_processes_share_what_the_deployment_has_left(tmp_path: Path) -> None:
    """Three processes get 334 + 333 + 333; restarted as two after process 0 spent 334,
    they share the 666 left, so the day never exceeds the budget."""
    clock = Clock(DAY1)
    three = [budgets(tmp_path, (i, 3), clock) for i in range(3)]
    assert allowances(three) == [334, 333, 333]
    c0 = three[0].charge("acme", 334)
    assert c0 is not None and c0.exhausted and c0.crossed
    assert not three[1].exhausted("acme")
    close_all()
    two = allowances([budgets(tmp_path, (i, 2), clock) for i in range(2)])
    # Process 0 keeps its 334 spent and may spend half of the 666 left; process 1 the rest.
    assert two == [334 + 333, 333] and sum(two) - 334 == 666


def test_tenants_without_a_budget_are_never_held(tmp_path: Path) -> None:
    b = budgets(tmp_path, (0, 1), Clock(DAY1))
    assert b.charge("globex", 10**12) is None and not b.exhausted("globex")


def test_days_older_than_a_week_are_deleted(tmp_path: Path) -> None:
    clock = Clock(DAY1 - 10 * 86_400)
    b = budgets(tmp_path, (0, 1), clock)
    b.charge("acme", 10)
    clock.now = DAY1
    b.charge("acme", 10)
    keys = list(open_store(StoreLayout(tmp_path, 0).budgets).keys())
    assert len(keys) == 1 and isinstance(keys[0], bytes) and b"2026-12-03" in keys[0]
