"""Prompt token budgets: trimming context to fit, and a token estimate calibrated from usage.

Pure logic, no runtime: `fit` trims the context of a request's item payloads, `pack_groups`
splits a pack whose items' own data would not fit, `TokenCalibration` learns how far the
offline estimate (`prompts.estimate_tokens`, about 4 characters a token) is from what the
endpoint reports in `usage.prompt_tokens`.

The budget is per request (a pack's items share it; in `fanout` mode a request is one item).
Sizes here are JSON characters, the unit of the offline estimate: the caller turns a budget
in tokens into a character limit with the calibration factor (`limit_chars`).

Trimming follows the task's `context_priority` (default item, profile, summary, memory,
knowledge) from the end: context keys not named there go first, then knowledge, memory,
summary, profile. What a unit is depends only on the value's type, so sections added later
need no code here:

- a list (memory turns, knowledge chunks): one element at a time. Elements that all carry a
  numeric `score` go lowest score first over the whole request; others go oldest (first)
  first, taken from the item with the most left, so the items of a pack keep about as many
  recent turns each;
- a string (a summary): truncated to what still fits (with a trailing "…"), or dropped whole
  when less than `MIN_KEEP_CHARS` would be left; longest first;
- anything else (a profile): dropped whole, largest first.

The item's own data is never dropped: a request whose items alone exceed the budget is sent
as it is and reported over budget.
"""

from __future__ import annotations

import heapq
import json
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from config.models import CONTEXT_PRIORITY

ITEM = "item"
DEFAULT_PRIORITY: tuple[str, ...] = CONTEXT_PRIORITY
"""Context sections from most to least important; the item itself always comes first."""

MIN_KEEP_CHARS = 48
"""A string section truncated below this many characters is dropped whole instead."""

ELLIPSIS = "…"

Dumps = Callable[[Any], str]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _plain_dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


def limit_chars(budget_tokens: int, factor: float) -> int:
    """The most characters a prompt may have so its calibrated estimate fits the budget.

    The estimate of `n` characters is `n // 4 + 1` tokens (`prompts.estimate_tokens`) and the
    calibrated estimate multiplies it by `factor`.

    >>> limit_chars(1000, 1.0), limit_chars(1000, 2.0)
    (3999, 1999)
    """
    tokens = math.floor(budget_tokens / max(factor, 1e-9))
    return max(0, 4 * tokens - 1)


@dataclass
class Trimmed:
    """What `fit` did to one request: counts per section and the resulting size."""

    dropped: dict[str, int]
    """Units dropped per section: list elements (turns, chunks), whole strings or values."""
    truncated: dict[str, int]
    """Strings shortened per section (not counted in `dropped`)."""
    chars: int
    """Size of the request after trimming (fixed part plus the item payloads' JSON)."""
    over_budget: bool
    """True if the request still exceeds the limit with every context unit dropped."""


def payloads_chars(payloads: Sequence[dict[str, Any]], dumps: Dumps = _plain_dumps) -> int:
    """JSON size of the array of item payloads."""
    return len(dumps(list(payloads)))


def fit(
    payloads: list[dict[str, Any]],
    fixed_chars: int,
    limit: int,
    priority: Sequence[str] = DEFAULT_PRIORITY,
    dumps: Dumps = _plain_dumps,
    size: int | None = None,
    *,
    stop_at_strings: bool = False,
) -> Trimmed:
    """Trim the `context` of `payloads` in place until `fixed_chars` plus their JSON fits `limit`.

    `payloads` are the request's item payloads (`{"id", "data", "context"?, ...}`); each
    trimmed context dict and list is replaced by a copy, so values shared with work items are
    never changed. A context left empty is removed, as are emptied sections. `size`, when
    known, is the payloads' JSON size (saves one encoding). Every saving is counted at most
    as large as it is (a comma, a key or an empty section may go too), so the result never
    exceeds `limit` unless the items alone do.

    With `stop_at_strings`, trimming stops at the first section holding a string (it and
    the sections after it are left for a second call): the prompt builder trims whole units
    before redacting, so it redacts only what is sent, and truncates strings only after,
    so a cut never splits a PII value into a piece the redactor would not recognize.

    >>> items = [{"id": "a", "data": {"text": "hi"},
    ...           "context": {"memory": [{"text": "x" * 40}, {"text": "y" * 40}],
    ...                       "profile": {"tier": "gold"}}}]
    >>> payloads_chars(items)
    186
    >>> t = fit(items, 0, 150)  # the oldest turn goes first
    >>> t.dropped, t.chars, [m["text"][0] for m in items[0]["context"]["memory"]]
    ({'memory': 1}, 134, ['y'])
    >>> t = fit(items, 0, 30)  # then the profile; the item itself stays, over budget
    >>> t.dropped, t.over_budget, items
    ({'memory': 1, 'profile': 1}, True, [{'id': 'a', 'data': {'text': 'hi'}}])
    """
    total = fixed_chars + (payloads_chars(payloads, dumps) if size is None else size)
    dropped: dict[str, int] = {}
    truncated: dict[str, int] = {}
    need = total - limit
    if need <= 0:
        return Trimmed(dropped, truncated, total, over_budget=False)

    contexts: list[dict[str, Any] | None] = []
    for p in payloads:
        ctx = p.get("context")
        if isinstance(ctx, dict) and ctx:
            ctx = dict(ctx)
            p["context"] = ctx
            contexts.append(ctx)
        else:
            contexts.append(None)

    named = [s for s in priority if s != ITEM]
    seen: dict[str, None] = {}
    for ctx in contexts:
        for key in ctx or ():
            if key not in named:
                seen.setdefault(key)
    order = [*seen, *reversed(named)]

    for section in order:
        if need <= 0:
            break
        holders = [(i, c) for i, c in enumerate(contexts) if c is not None and section in c]
        if not holders:
            continue
        if stop_at_strings and any(isinstance(c[section], str) for _, c in holders):
            break
        need = _trim_section(section, holders, need, dropped, truncated, dumps)

    for p, ctx in zip(payloads, contexts, strict=True):
        if ctx is not None and not ctx:
            del p["context"]
    chars = fixed_chars + payloads_chars(payloads, dumps)
    return Trimmed(dropped, truncated, chars, over_budget=chars > limit)


def _trim_section(
    section: str,
    holders: list[tuple[int, dict[str, Any]]],
    need: int,
    dropped: dict[str, int],
    truncated: dict[str, int],
    dumps: Dumps,
) -> int:
    """Drop units of `section` from the contexts in `holders` until `need` chars are saved."""
    key_chars = len(dumps(section)) + 1  # "section": (an emptied section goes with its key)

    def count(into: dict[str, int], n: int = 1) -> None:
        into[section] = into.get(section, 0) + n

    lists = [(i, c) for i, c in holders if isinstance(c[section], list)]
    if lists:
        for _, c in lists:
            c[section] = list(c[section])
        need = _trim_lists(section, lists, need, key_chars, dropped, dumps)

    strings = [(i, c) for i, c in holders if isinstance(c.get(section), str)]
    strings.sort(key=lambda ic: -len(ic[1][section]))
    for _, c in strings:
        if need <= 0:
            return need
        text: str = c[section]
        whole = len(dumps(text))
        keep = len(text) - need - len(ELLIPSIS)
        while keep >= MIN_KEEP_CHARS:
            short = text[:keep].rstrip() + ELLIPSIS
            saved = whole - len(dumps(short))
            if saved >= need:
                c[section] = short
                count(truncated)
                return need - saved
            keep -= max(1, need - saved)
        del c[section]
        count(dropped)
        need -= whole + key_chars

    others = [(i, c) for i, c in holders if section in c and not isinstance(c[section], list | str)]
    others.sort(key=lambda ic: -len(dumps(ic[1][section])))
    for _, c in others:
        if need <= 0:
            break
        need -= len(dumps(c.pop(section))) + key_chars
        count(dropped)
    return need


def _trim_lists(
    section: str,
    holders: list[tuple[int, dict[str, Any]]],
    need: int,
    key_chars: int,
    dropped: dict[str, int],
    dumps: Dumps,
) -> int:
    def scored(x: Any) -> bool:
        return isinstance(x, dict) and isinstance(x.get("score"), int | float)

    units = [x for _, c in holders for x in c[section]]
    n = 0
    if units and all(scored(x) for x in units):
        # Lowest score first over the whole request; among equals the later one.
        ranked = sorted(
            ((x["score"], -i, -j) for i, c in holders for j, x in enumerate(c[section])),
        )
        by_index = dict(holders)
        gone: dict[int, set[int]] = {}
        for _, neg_i, neg_j in ranked:
            if need <= 0:
                break
            i, j = -neg_i, -neg_j
            need -= len(dumps(by_index[i][section][j])) + 1
            gone.setdefault(i, set()).add(j)
            n += 1
        for i, js in gone.items():
            lst = by_index[i][section]
            by_index[i][section] = [x for j, x in enumerate(lst) if j not in js]
    else:
        # Oldest first, from the item holding the most, so a pack's items stay balanced.
        heap = [(-len(c[section]), i, c) for i, c in holders if c[section]]
        heapq.heapify(heap)
        firsts: dict[int, int] = {}
        while heap and need > 0:
            left, i, c = heapq.heappop(heap)
            start = firsts.get(i, 0)
            need -= len(dumps(c[section][start])) + 1
            firsts[i] = start + 1
            n += 1
            if left + 1 < 0:
                heapq.heappush(heap, (left + 1, i, c))
        for i, c in holders:
            if firsts.get(i):
                c[section] = c[section][firsts[i] :]
    for _, c in holders:
        if not c[section]:
            del c[section]
            need -= key_chars + 1  # "section":[] and its comma or the braces around it
    if n:
        dropped[section] = dropped.get(section, 0) + n
    return need


def pack_groups(floors: Sequence[int], fixed_chars: int, limit: int) -> list[list[int]]:
    """Split a pack into consecutive groups whose items' own payloads fit `limit`.

    `floors` are the JSON sizes of each item's payload without context. A group takes items
    while they fit (each needs its size plus a comma); an item that alone does not fit gets a
    group of its own.

    >>> pack_groups([40, 40, 40], fixed_chars=10, limit=100)
    [[0, 1], [2]]
    """
    groups: list[list[int]] = []
    current: list[int] = []
    used = fixed_chars + 2
    for i, floor in enumerate(floors):
        if current and used + floor + 1 > limit:
            groups.append(current)
            current, used = [], fixed_chars + 2
        current.append(i)
        used += floor + 1
    if current:
        groups.append(current)
    return groups


class TokenCalibration:
    """Per model, how many tokens the endpoint counts per estimated token (thread-safe).

    Each answered request adds one observation, `usage.prompt_tokens / estimate`, to a
    window of the last `window` per model. `factor(model)` is their `quantile` (0.995 by
    default): a prompt trimmed to `budget / factor` estimated tokens then exceeds the budget
    only when its content counts more tokens per character than 99.5 % of recent requests
    did, so after warm-up fewer than 1 % of requests go over (most are under the budget by
    some margin anyway). A quantile, unlike a mean, does not under-budget half the requests;
    a window, unlike an all-time maximum, follows a change of content or tokenizer and
    forgets one outlier.

    Until `warmup` observations a model's factor is the largest ratio seen so far times
    `warmup_margin`, and `prior` before the first one. The quantile is recomputed every
    `refresh` observations (a sort of the window), not per request.

    >>> cal = TokenCalibration(warmup=2, prior=1.5)
    >>> cal.factor("m")
    1.5
    >>> for actual in (110, 120, 130):
    ...     cal.observe("m", 100, actual)
    >>> cal.factor("m")  # the quantile of the window, raised at once by a higher ratio
    1.3
    """

    def __init__(
        self,
        quantile: float = 0.995,
        window: int = 2000,
        warmup: int = 30,
        prior: float = 1.5,
        warmup_margin: float = 1.1,
        refresh: int = 16,
    ) -> None:
        if not 0 < quantile <= 1:
            msg = f"quantile must be in (0, 1], got {quantile}"
            raise ValueError(msg)
        self.quantile = quantile
        self.window = window
        self.warmup = warmup
        self.prior = prior
        self.warmup_margin = warmup_margin
        self.refresh = refresh
        self._lock = threading.Lock()
        self._ratios: dict[str, deque[float]] = {}
        self._factor: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def factor(self, model: str) -> float:
        """Actual tokens per estimated token to plan with for `model`."""
        with self._lock:
            return self._factor.get(model, self.prior)

    def observe(self, model: str, estimate: int, actual: int) -> None:
        """Record one request: its offline `estimate` and the endpoint's `actual` count."""
        if estimate <= 0 or actual <= 0:
            return
        ratio = actual / estimate
        with self._lock:
            ratios = self._ratios.get(model)
            if ratios is None:
                ratios = self._ratios[model] = deque(maxlen=self.window)
            ratios.append(ratio)
            since = self._since.get(model, 0) + 1
            if len(ratios) < self.warmup:
                self._factor[model] = max(ratio * self.warmup_margin, self._factor.get(model, 0))
                self._since[model] = 0
            elif since >= self.refresh or len(ratios) == self.warmup:
                self._factor[model] = _quantile(ratios, self.quantile)
                self._since[model] = 0
            else:
                self._since[model] = since
                # A ratio above the current factor raises it at once: one more over-budget
                # request is dearer than the few characters of context it costs to prevent.
                self._factor[model] = max(self._factor[model], ratio)

    def observations(self, model: str) -> int:
        with self._lock:
            return len(self._ratios.get(model, ()))


class FixedCalibration(TokenCalibration):
    """A constant factor (1.0: the offline estimate as it is); for comparisons and tests."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__(prior=value)

    def observe(self, model: str, estimate: int, actual: int) -> None:
        return None


def _quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]
