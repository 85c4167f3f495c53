"""Daily token budgets per tenant (`[tenants.<name>] daily_token_budget`).

A tenant's budget is the tokens (prompt and completion, as the endpoint reports them) its
LLM requests may spend per UTC day; cache hits cost nothing. The budget is the deployment's:
each process of an `-i/-a` cluster may spend a share of what the deployment had left when the
process first touched that tenant's day, so the shares add up to the budget whatever the
process count was before a restart:

    allowance = own spend so far + share(budget - spend of every process so far)

where `share` splits like `LLMConfig.process_share` (the first processes take the
remainder). Spend is kept per (tenant, UTC day) in the process's own store
(`stores.dir/process-N/budgets`), written after every request, so a restart does not give a
tenant its budget again; the other processes' stores are read once per (tenant, day),
read-only. Writes are absolute totals of this process's spend (a replay re-sends no request
whose answer is cached, so it spends and writes nothing); entries older than `KEEP_DAYS` are
deleted as days go by.

The budget is checked before each request: the requests already in flight when it runs out
still finish, so a day can overshoot by at most what those spend.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, cast

from core.clock import Clock
from state.stores import open_read_only_fresh, open_store

BudgetAction = Literal["wait", "dead_letter"]

KEEP_DAYS = 7
"""Days of spend kept in the store (the audit keeps the history)."""

_PREFIX = b"spent\x00"


@dataclass(frozen=True)
class Budget:
    """One tenant's daily budget and what happens to its work once it is spent."""

    tokens: int
    on_spent: BudgetAction = "wait"


@dataclass(frozen=True)
class Charge:
    """What one request's spend did to its tenant's day."""

    tenant: str
    day: str
    spent: int
    """This process's spend of the day, after the request."""
    allowance: int
    """What this process may spend of the day."""
    exhausted: bool
    """The allowance is spent."""
    crossed: bool
    """This request spent the last of the allowance (first time this day)."""


def utc_day(ts: float) -> str:
    """The UTC day of epoch seconds `ts`, as `YYYY-MM-DD`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def next_day(ts: float) -> float:
    """Epoch seconds of the UTC midnight after `ts` (when budgets start again)."""
    day = datetime.fromtimestamp(ts, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=1)).timestamp()


def process_part(total: int, index: int, count: int) -> int:
    """Process `index` of `count`'s part of `total`; the parts add up to `total`.

    >>> [process_part(10, i, 3) for i in range(3)]
    [4, 3, 3]
    """
    return total // count + (1 if index < total % count else 0)


class TokenBudgets:
    """The budgets of one process: what each tenant may still spend today. Thread-safe.

    `path` is this process's store (None: spend is kept in memory only, as in tests of pure
    logic); `peers` lists the other processes' stores (as found now), read when a tenant's
    day is first touched; `process` is `(index, count)`.

    >>> b = TokenBudgets({"acme": Budget(100)}, clock=lambda: 0.0)
    >>> b.exhausted("acme"), b.charge("acme", 60).exhausted
    (False, False)
    >>> c = b.charge("acme", 50)
    >>> (c.spent, c.allowance, c.exhausted, c.crossed), b.exhausted("acme")
    ((110, 100, True, True), True)
    >>> b.exhausted("globex"), b.charge("globex", 10**9)  # no budget: never exhausted
    (False, None)
    """

    def __init__(
        self,
        budgets: Mapping[str, Budget],
        path: str | Path | None = None,
        peers: Callable[[], Iterable[str | Path]] = tuple,
        process: tuple[int, int] = (0, 1),
        clock: Clock = time.time,
    ) -> None:
        self.budgets = dict(budgets)
        self.path = None if path is None else Path(path)
        self.peers = peers
        self.process = process
        self.clock = clock
        self._lock = threading.Lock()
        self._spent: dict[tuple[str, str], int] = {}
        self._allowance: dict[tuple[str, str], int] = {}
        self._crossed: set[tuple[str, str]] = set()
        self._pruned_day: str | None = None

    def budget(self, tenant: str) -> Budget | None:
        return self.budgets.get(tenant)

    def spent_reason(self, tenant: str) -> str:
        """The dead-letter reason for work of `tenant` while its budget is spent."""
        rules = self.budgets.get(tenant)
        return (
            f"tenant {tenant!r} has spent its daily token budget "
            f"({rules.tokens if rules else 0} tokens per UTC day, "
            f"tenants.{tenant}.daily_token_budget)"
        )

    def exhausted(self, tenant: str) -> bool:
        """Whether `tenant` has spent this process's allowance of today."""
        if tenant not in self.budgets:
            return False
        day = utc_day(self.clock())
        with self._lock:
            key = self._touch(tenant, day)
            return self._spent[key] >= self._allowance[key]

    def charge(self, tenant: str, tokens: int) -> Charge | None:
        """Count `tokens` spent by `tenant` now; None if it has no budget."""
        if tenant not in self.budgets:
            return None
        day = utc_day(self.clock())
        with self._lock:
            key = self._touch(tenant, day)
            spent = self._spent[key] = self._spent[key] + max(0, tokens)
            allowance = self._allowance[key]
            exhausted = spent >= allowance
            crossed = exhausted and key not in self._crossed
            if crossed:
                self._crossed.add(key)
            self._write(key, spent, crossed)
        return Charge(tenant, day, spent, allowance, exhausted, crossed)

    def resets_at(self) -> float:
        """When today's budgets end (the next UTC midnight)."""
        return next_day(self.clock())

    # -- state ---------------------------------------------------------------------------

    def _touch(self, tenant: str, day: str) -> tuple[str, str]:
        key = (tenant, day)
        if key not in self._allowance:
            own, crossed = self._read_own(key)
            everyone = own + sum(self._read_peer(Path(p), key) for p in self.peers())
            left = max(0, self.budgets[tenant].tokens - everyone)
            self._spent[key] = own
            self._allowance[key] = own + process_part(left, *self.process)
            if crossed:
                self._crossed.add(key)
            self._prune(day)
        return key

    def _prune(self, today: str) -> None:
        """Forget days older than `KEEP_DAYS`, in memory and in the store (once a day)."""
        if self._pruned_day == today:
            return
        self._pruned_day = today
        cutoff = (datetime.strptime(today, "%Y-%m-%d") - timedelta(days=KEEP_DAYS)).strftime(
            "%Y-%m-%d"
        )
        for mem in (self._spent, self._allowance):
            for key in [k for k in mem if k[1] < cutoff]:
                del mem[key]
        self._crossed = {k for k in self._crossed if k[1] >= cutoff}
        if self.path is None:
            return
        db = open_store(self.path)
        old = [k for k in db.keys(from_key=_PREFIX) if isinstance(k, bytes) and _is_old(k, cutoff)]
        for k in old:
            del db[k]

    def _read_own(self, key: tuple[str, str]) -> tuple[int, bool]:
        if self.path is None:
            return 0, False
        raw = open_store(self.path).get(_key(key))
        if raw is None:
            return 0, False
        value = json.loads(raw)
        return int(value["spent"]), bool(value["crossed"])

    def _write(self, key: tuple[str, str], spent: int, crossed: bool) -> None:
        if self.path is None:
            return
        value = {"spent": spent, "crossed": crossed or key in self._crossed}
        open_store(self.path)[_key(key)] = json.dumps(value).encode()

    def _read_peer(self, peer: Path, key: tuple[str, str]) -> int:
        if not (peer / "CURRENT").exists() or peer.resolve() == (self.path or Path()).resolve():
            return 0
        db = open_read_only_fresh(peer)
        try:
            raw = db.get(_key(key))
        finally:
            db.close()
        return 0 if raw is None else int(json.loads(raw)["spent"])


def _key(key: tuple[str, str]) -> bytes:
    tenant, day = key
    return _PREFIX + day.encode() + b"\x00" + tenant.encode()


def _is_old(raw: bytes, cutoff: str) -> bool:
    if not raw.startswith(_PREFIX):
        return False
    day = raw[len(_PREFIX) :].split(b"\x00", 1)[0].decode()
    return day < cutoff


_shared: dict[tuple[object, ...], TokenBudgets] = {}
_shared_lock = threading.Lock()


def shared_budgets(
    budgets: tuple[tuple[str, int, str], ...],
    path: str | Path,
    peers: Callable[[], Iterable[str | Path]],
    process: tuple[int, int],
) -> TokenBudgets | None:
    """The process-wide budgets for `budgets` (`Settings.token_budgets()`) kept at `path`;
    None when no tenant has a budget. One per store, however many flows a process builds."""
    if not budgets:
        return None
    key = (budgets, str(Path(path).resolve()), process)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            rules = {t: Budget(n, cast(BudgetAction, a)) for t, n, a in budgets}
            found = _shared[key] = TokenBudgets(rules, path, peers, process)
        return found
