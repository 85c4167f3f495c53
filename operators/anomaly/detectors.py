"""Pure streaming detectors for one numeric series: one pass, past data only, bounded state.

Every detector here has the same small contract:

- `update(x) -> float`: score the new value against what came *before* it, then learn it.
  Scores are raw "surprise" in [0, 1] (1 = never seen anything like it).
- `state() -> tuple`: plain data (floats, ints, tuples, small dicts), an immutable copy, from
  which `cls(params..., state=...)` rebuilds a detector that continues exactly where this one
  stands (same statistics, same next score).
- Memory is bounded by constructor parameters (window lengths, capped dictionaries), never by
  the length of the series.

The detectors the ensemble snapshots also have `pack()`: the same state as bytes (floats as
little-endian IEEE doubles, exact; integers in the narrowest type that holds them), of which
the series snapshot (`series.EnsembleSeries.state`) is made, and `unpack(packed)`, which turns
it back into the `state()` layout so that one constructor serves both. A `RankShift`'s window
of means is not packed at all: `RankTape` records what rebuilds it (2 bytes a reading instead
of 8).

No runtime, no clock, no numpy: the pipeline (`operators.anomaly`) and the benchmark
(`bench.nab`) drive the same classes.
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

UNRANKED = 0xFFFF
"""`RankTape` code of a reading that was not ranked (the first value of a seasonal slot)."""

_BIG_ENDIAN = sys.byteorder == "big"


def _le(a: array[Any]) -> bytes:
    """The array's bytes little-endian whatever the machine: as portable as pickled numbers."""
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _from_le(a: array[Any], packed: bytes) -> array[Any]:
    a.frombytes(packed)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def pack_floats(values: Iterable[float]) -> bytes:
    """Floats as little-endian doubles: exact, 8 bytes each (a pickled float takes 9)."""
    return _le(array("d", values))


def unpack_floats(packed: bytes) -> array[float]:
    return _from_le(array("d"), packed)


def pack_ints(values: Iterable[int]) -> bytes:
    """Integers in the narrowest type that holds them all (unsigned when none is negative),
    its type code first."""
    vals = values if isinstance(values, list) else list(values)
    lo, hi = (min(vals), max(vals)) if vals else (0, 0)
    codes = _UNSIGNED if lo >= 0 else _SIGNED
    # the widest when none holds them: `array` then raises OverflowError
    code = next((c for c, low, high in codes if low <= lo and hi < high), codes[-1][0])
    return code.encode() + _le(array(code, vals))


def _int_codes(codes: str) -> list[tuple[str, int, int]]:
    """Per array type code: the lowest value it holds and one past its highest."""
    out = []
    for code in codes:
        bits = 8 * array(code).itemsize
        out.append(
            (code, 0, 1 << bits) if code.isupper() else (code, -(1 << bits - 1), 1 << bits - 1)
        )
    return out


_UNSIGNED = _int_codes("BHIQ")
_SIGNED = _int_codes("bhiq")


def unpack_ints(packed: bytes) -> array[int]:
    return _from_le(array(chr(packed[0])), packed[1:])


class Range:
    """Running minimum and maximum of a series (the scale for quantizing detectors)."""

    __slots__ = ("hi", "lo", "n")

    def __init__(self, state: tuple[int, float, float] | None = None) -> None:
        self.n, self.lo, self.hi = state or (0, math.inf, -math.inf)

    def update(self, x: float) -> None:
        self.n += 1
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)

    def state(self) -> tuple[int, float, float]:
        return (self.n, self.lo, self.hi)


class EwmaZScore:
    """Streaming z-score of a value against its exponentially weighted mean and variance."""

    __slots__ = ("alpha", "last_alert_ts", "mean", "n", "suppress_s", "threshold", "var", "warmup")

    def __init__(
        self,
        alpha: float,
        threshold: float,
        warmup: int,
        suppress_s: float,
        state: tuple[int, float, float, float] | None = None,
    ) -> None:
        self.alpha = alpha
        self.threshold = threshold
        self.warmup = warmup
        self.suppress_s = suppress_s
        self.n, self.mean, self.var, self.last_alert_ts = state or (0, 0.0, 0.0, -math.inf)

    def update(self, value: float, ts: float) -> tuple[float, bool]:
        """Score `value` against the baseline so far, then fold it in.

        Returns the absolute z-score and whether it is an alert.
        """
        n, mean, var = self.n, self.mean, self.var
        if n == 0:
            self.n, self.mean, self.var = 1, value, 0.0
            return 0.0, False
        std = math.sqrt(var)
        # A flat series has zero variance: any change is then infinitely surprising, so floor
        # the deviation at a small fraction of the level to keep scores finite and meaningful.
        floor = 1e-3 * max(abs(mean), 1e-9)
        z = abs(value - mean) / max(std, floor)
        alert = (
            n >= self.warmup and z >= self.threshold and ts - self.last_alert_ts >= self.suppress_s
        )
        if alert:
            self.last_alert_ts = ts
        diff = value - mean
        incr = self.alpha * diff
        self.mean = mean + incr
        self.var = (1 - self.alpha) * (var + diff * incr)
        self.n = n + 1
        return z, alert

    def state(self) -> tuple[int, float, float, float]:
        return (self.n, self.mean, self.var, self.last_alert_ts)


class ContextNovelty:
    """Novelty of the latest value in the context of the values before it (after CAD OSE).

    Values are quantized into `levels` levels on the series' running range (a value outside
    the range seen so far gets a level of its own). For every context length k = 1..`orders`,
    the pair (last k levels, current level) is looked up in a memory of pairs seen before; the
    score is the share of context lengths whose pair is new, so a familiar shape scores 0 and a
    value never seen after its recent past scores 1. The memory forgets the least recently
    seen pairs beyond `capacity` (CAD's "lethe" memory), so it stays bounded and follows
    regime changes.

    State: the range, the last `orders` levels and the memory as a tuple of (pair, last seen).
    """

    __slots__ = ("capacity", "hist", "levels", "mem", "orders", "range", "t")

    def __init__(
        self,
        levels: int = 8,
        orders: int = 3,
        capacity: int = 2048,
        state: tuple[Any, ...] | None = None,
    ) -> None:
        self.levels = levels
        self.orders = orders
        self.capacity = capacity
        if state is None:
            self.range = Range()
            self.hist: tuple[int, ...] = ()
            self.mem: dict[tuple[int, ...], int] = {}
            self.t = 0
        else:
            rng, hist, mem, t = state
            self.range = Range(rng)
            self.hist = tuple(hist)
            self.mem = dict(mem)
            self.t = t

    def level(self, x: float) -> int:
        lo, hi = self.range.lo, self.range.hi
        if x < lo:
            return -1
        if x > hi:
            return self.levels
        span = hi - lo
        if span <= 0.0:
            return 0
        return min(int((x - lo) / span * self.levels), self.levels - 1)

    def update(self, x: float) -> float:
        rng = self.range
        lo, hi = rng.lo, rng.hi
        # `level(x)` on the range before `x`, then `Range.update(x)`, inline (this runs per
        # reading and resolution)
        if x < lo:
            cur = -1
            rng.lo = x
            if x > hi:
                rng.hi = x
        elif x > hi:
            cur = self.levels
            rng.hi = x
        else:
            span = hi - lo
            levels = self.levels
            cur = min(int((x - lo) / span * levels), levels - 1) if span > 0.0 else 0
        rng.n += 1
        hist = self.hist
        mem = self.mem
        self.t += 1
        t = self.t
        if self.orders == 1:
            self.hist = (cur,)
            if not hist:
                return 0.0
            pair = (hist[0], cur)
            fresh = mem.pop(pair, None) is None
            mem[pair] = t  # re-insert: dict order is recency order
            while len(mem) > self.capacity:
                del mem[next(iter(mem))]
            return 1.0 if fresh else 0.0
        novel = 0
        seen = 0
        for k in range(1, min(len(hist), self.orders) + 1):
            key = (*hist[-k:], cur)
            seen += 1
            if mem.pop(key, None) is None:
                novel += 1
            mem[key] = t
        if len(mem) > self.capacity:
            for key in list(mem)[: len(mem) - self.capacity]:
                del mem[key]
        self.hist = (*hist[1 - self.orders :], cur)
        return novel / seen if seen else 0.0

    def state(self) -> tuple[Any, ...]:
        return (self.range.state(), self.hist, tuple(self.mem.items()), self.t)

    def pack(self) -> tuple[Any, ...]:
        """`state()` with the memory as three packed arrays, least recently seen first: each
        pair's length, the pairs' levels end to end, and how many readings ago each was seen
        (small numbers, so usually one or two bytes each)."""
        mem, t = self.mem, self.t
        return (
            self.range.state(),
            self.hist,
            pack_ints([len(key) for key in mem]),
            pack_ints([level for key in mem for level in key]),
            pack_ints([t - seen for seen in mem.values()]),
            t,
        )

    @staticmethod
    def unpack(packed: tuple[Any, ...]) -> tuple[Any, ...]:
        """The `state()` layout of a `pack()`."""
        rng, hist, lengths, levels, ages, t = packed
        flat = unpack_ints(levels)
        mem = []
        i = 0
        for length, age in zip(unpack_ints(lengths), unpack_ints(ages), strict=True):
            mem.append((tuple(flat[i : i + length]), t - age))
            i += length
        return (rng, hist, tuple(mem), t)


_SHAPE_CLIP = 1 << 20
"""Haar details beyond this many levels are clipped (a reading far outside the range)."""


def _haar(ring: tuple[float, ...], lo: float, span: float) -> tuple[float, ...]:
    """The Haar details of an 8-reading window and its last reading's position, in units of
    the range `span` above `lo` (the details are differences: `lo` cancels out of them)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = ring
    s01, s23, s45, s67 = v0 + v1, v2 + v3, v4 + v5, v6 + v7
    return (
        (s01 + s23 - s45 - s67) / (4 * span),
        (s01 - s23) / (2 * span),
        (s45 - s67) / (2 * span),
        (v6 - v7) / span,
        (v7 - lo) / span,
    )


class ShapeNovelty:
    """Is the shape of the last `WIDTH` (8) readings a new category? (after ARTime's alarms).

    The window is described by its Haar details: the difference of its halves' means, of the
    quarters' means within each half, and of its last two readings; plus the latest reading's
    position on the series' running range (of the readings before it, so that the latest can
    fall outside). At each resolution L of `levels`, the details in units of range / L,
    rounded, and the latest reading's level (0..L-1; -1 below the range, L above) are the
    window's category there. `update` answers whether the category is new at any resolution,
    i.e. not in that resolution's memory of the `capacity` most recently seen ones (least
    recently seen forgotten first), then remembers it. A window on a range of zero width is
    the category (0,). The ensemble lets the seasonal residual alarm only on a new category:
    a large residual whose shape the series has shown before (a spike of a familiar size at a
    familiar level) is not an anomaly (ARTime raises an alarm only when its ART network
    creates a category). Several resolutions, like the context novelty's, keep a category
    boundary that happens to fall between two similar windows at one resolution from
    deciding alone.

    State: the range, the last `WIDTH` readings and a memory per resolution, least recently
    seen first.
    """

    WIDTH = 8
    __slots__ = ("_cap", "capacity", "levels", "mems", "range", "ring")

    def __init__(
        self,
        levels: tuple[int, ...] = (8,),
        capacity: int = 64,
        state: tuple[Any, ...] | None = None,
    ) -> None:
        self.levels = tuple(levels)
        self._cap = _SHAPE_CLIP / max(self.levels)  # details within it need no clipping
        self.capacity = capacity
        self.mems: list[dict[tuple[int, ...], None]]
        if state is None:
            self.range = Range()
            self.ring: tuple[float, ...] = ()
            self.mems = [{} for _ in self.levels]
        else:
            rng, ring, mems = state
            self.range = Range(rng)
            self.ring = tuple(ring)
            self.mems = [dict.fromkeys(tuple(k) for k in mem[-capacity:]) for mem in mems]

    def categories(self) -> list[tuple[int, ...]]:
        """The current window's (`ring` full) category at each resolution."""
        return self._categories(self.ring, self.range.lo, self.range.hi)

    def _categories(self, ring: tuple[float, ...], lo: float, hi: float) -> list[tuple[int, ...]]:
        span = hi - lo
        if not span > 0.0:
            return [(0,)] * len(self.levels)
        d1, d2, d3, d4, pos = _haar(ring, lo, span)
        cap = self._cap
        if -cap < d1 < cap and -cap < d2 < cap and -cap < d3 < cap and -cap < d4 < cap:
            r = round
            if 0.0 <= pos <= 1.0:
                return [
                    (r(d1 * n), r(d2 * n), r(d3 * n), r(d4 * n), int(pos * n)) for n in self.levels
                ]
            return [
                (r(d1 * n), r(d2 * n), r(d3 * n), r(d4 * n), -1 if pos < 0.0 else n)
                for n in self.levels
            ]
        clip = _SHAPE_CLIP
        return [
            (
                *(min(max(round(d * n), -clip), clip) for d in (d1, d2, d3, d4)),
                -1 if pos < 0.0 else n if pos >= 1.0 else int(pos * n),
            )
            for n in self.levels
        ]

    def update(self, x: float) -> bool:
        """Push `x`; True if the window ending at `x` is a category new at some resolution."""
        ring = self.ring = (*self.ring[1 - self.WIDTH :], x)
        rng = self.range
        lo, hi = rng.lo, rng.hi
        rng.n += 1  # the range takes `x` after the categories are named on the range before it
        if x < lo:
            rng.lo = x
        if x > hi:
            rng.hi = x
        if len(ring) < self.WIDTH:
            return False
        span = hi - lo
        if span > 0.0:
            d1, d2, d3, d4, pos = _haar(ring, lo, span)
            if 0.0 <= pos <= 1.0:
                # The common case, inline (this runs per reading): every reading of the window
                # in the range (the earlier ones are: the range took them), so every detail is
                # within 1 and needs no clipping.
                new = False
                capacity = self.capacity
                r = round
                for n, mem in zip(self.levels, self.mems, strict=True):
                    key = (r(d1 * n), r(d2 * n), r(d3 * n), r(d4 * n), int(pos * n))
                    # `_remember`, inline: pop and re-insert (dict order is recency order)
                    if mem.pop(key, 0) is not None:
                        new = True
                    mem[key] = None
                    if len(mem) > capacity:
                        del mem[next(iter(mem))]
                return new
        return self._remember(self._categories(ring, lo, hi))

    def _remember(self, keys: list[tuple[int, ...]]) -> bool:
        """Refresh each resolution's memory with its category; True if one was new."""
        new = False
        capacity = self.capacity
        for key, mem in zip(keys, self.mems, strict=True):
            if mem.pop(key, 0) is not None:
                new = True
            mem[key] = None
            if len(mem) > capacity:
                del mem[next(iter(mem))]
        return new

    def state(self) -> tuple[Any, ...]:
        return (self.range.state(), self.ring, tuple(tuple(mem) for mem in self.mems))

    def pack(self) -> tuple[Any, ...]:
        """`state()` with each memory as two packed arrays: each category's length and the
        categories end to end, least recently seen first."""
        return (
            self.range.state(),
            pack_floats(self.ring),
            tuple(
                (pack_ints([len(key) for key in mem]), pack_ints([v for key in mem for v in key]))
                for mem in self.mems
            ),
        )

    @staticmethod
    def unpack(packed: tuple[Any, ...]) -> tuple[Any, ...]:
        """The `state()` layout of a `pack()`."""
        rng, ring, mems = packed
        out = []
        for lengths, flat_b in mems:
            flat = unpack_ints(flat_b)
            mem = []
            i = 0
            for length in unpack_ints(lengths):
                mem.append(tuple(flat[i : i + length]))
                i += length
            out.append(tuple(mem))
        return (rng, tuple(unpack_floats(ring)), tuple(out))


class Rank:
    """Where a value ranks among the last `window` values: the share of them strictly below it.

    A conformal p-value turned around: 1.0 means "higher than everything in the window". The
    window is kept twice in flat `array('d')` buffers (8 bytes a value): a ring in arrival
    order, to drop the oldest, and a sorted copy, to rank with a binary search. An update costs
    O(log n) comparisons plus a C-level memory shift.
    """

    __slots__ = ("head", "ring", "sorted", "window")

    def __init__(self, window: int = 1500, state: Sequence[float] | None = None) -> None:
        self.window = window
        self.ring = array("d", state or ())[-window:]
        self.head = 0  # index of the oldest value once the ring is full
        self.sorted = array("d", sorted(self.ring))

    def __len__(self) -> int:
        return len(self.sorted)

    def rank(self, x: float) -> float:
        n = len(self.sorted)
        return bisect_left(self.sorted, x) / n if n else 0.0

    def below(self, x: float) -> int:
        """How many values in the window are strictly below `x` (`rank` times the length)."""
        return bisect_left(self.sorted, x)

    def push(self, x: float) -> None:
        srt = self.sorted
        if len(self.ring) < self.window:
            self.ring.append(x)
        else:
            old = self.ring[self.head]
            del srt[bisect_left(srt, old)]
            self.ring[self.head] = x
            self.head = (self.head + 1) % self.window
        srt.insert(bisect_left(srt, x), x)

    def state(self) -> tuple[float, ...]:
        """The window oldest first (a copy)."""
        h = self.head
        return tuple(self.ring[h:]) + tuple(self.ring[:h])

    def pack(self) -> bytes:
        """`state()` as packed doubles."""
        h = self.head
        return pack_floats(self.ring[h:] + self.ring[:h])


class WindowSketch:
    """`Rank` over the same sliding window in a few KB: exact for the window's largest values.

    Two parts. The *bins*: the window's values counted in log-spaced bins (a value x > 0 in
    bin floor(log(x) / log(gamma)), gamma = (1 + a) / (1 - a) for a relative `accuracy` a,
    offset so that the first positive value lands mid-array, clamped into the `bins` bins;
    values <= 0 in bin 0), one count array per block of `window / blocks` readings (rounded
    up): the oldest block leaves as a whole, so the bins hold between one block less than
    `window` and `window` readings. The *top*: the `tail` largest values seen, with their
    arrivals, kept while they are in the exact sliding window (the last `window` readings),
    and, per bin, the latest arrival of a window value that is not in the top (one that did
    not make it, or was pushed out). Every window value in a bin above the highest such bin
    is in the top, so a value in such a bin ranks exactly as `Rank` ranks it: the share of
    the last `window` values strictly below it, 1.0 above them all (`exact(x)`). Those are
    the ranks that reach an alert (the ensemble scores rank ** 100: a rank of 0.98 scores
    0.13); below, the rank is the bins' share below plus half its own bin, within one bin
    and one block of the truth, which is what the shift detector's mean surprise needs.

    State (`pack()`): the bin offset, the reading count, per block its zero count, lowest
    bin and counts up to its highest, the top's values (doubles) and ages and the bins' last
    exclusions; a few KB whatever the window's length. Integers and doubles only: a sketch
    rebuilt from it ranks and updates exactly as the one it was taken from.
    """

    __slots__ = (
        "_last",
        "_trimmed",
        "base",
        "bins",
        "blocks",
        "cnt",
        "excluded",
        "log_gamma",
        "max_blocks",
        "n",
        "next_expiry",
        "open_above",
        "pushes",
        "size",
        "tail",
        "top_at",
        "top_v",
        "tree",
        "wide",
        "window",
    )

    def __init__(
        self,
        accuracy: float = 0.1,
        window: int = 3000,
        blocks: int = 16,
        tail: int = 64,
        bins: int | None = None,
        state: tuple[Any, ...] | None = None,
    ) -> None:
        """`bins`: by default as many as span a factor of e ** 26 (about 1e11) either way of
        the first positive value."""
        self.log_gamma = math.log((1 + accuracy) / (1 - accuracy))
        bins = bins or 2 * math.ceil(26 / self.log_gamma) + 2
        self.window = window
        self.max_blocks = blocks
        self.size = -(-window // blocks)  # ceil: the blocks hold at least `window` readings
        self.wide = self.size > 255  # a block's counts need two bytes each
        self.tail = tail
        self.bins = bins
        self.cnt = [0] * bins
        self.tree = [0] * (bins + 1)
        self.blocks: deque[bytearray | array[int]] = deque()
        self.n = 0
        base, pushes, blocks_s, top, excluded = state or (None, 0, (), ((), ()), ())
        self.base: int | None = base
        self.pushes: int = pushes
        for zero, lo, counts in blocks_s:
            block = self._block()
            for i, c in ((0, zero), *enumerate(counts, lo)):
                if c:
                    block[i] = c
                    self._add(i, c)
            self.blocks.append(block)
        # The top, ascending by value: values and arrivals.
        self.top_v: list[float] = list(top[0])
        self.top_at: list[int] = list(top[1])
        self.next_expiry = min(self.top_at, default=0)  # the oldest arrival in the top
        # Bin -> the latest arrival of a window value in it that is not in the top; and the
        # highest bin with one still in the window (-1: none), above which ranks are exact.
        self.excluded: dict[int, int] = dict(excluded)
        self.open_above = -1
        self._settle()
        self._last: tuple[float, int] = (math.nan, 0)  # the last value binned, and its bin
        # `_trim` of the oldest blocks (all but the newest, which still changes), in order.
        self._trimmed: deque[tuple[int, int, bytearray | array[int]]] = deque()

    def __len__(self) -> int:
        return self.n

    def _block(self) -> bytearray | array[int]:
        return array("H", bytes(2 * self.bins)) if self.wide else bytearray(self.bins)

    def _bin(self, x: float) -> int:
        last = self._last
        if x == last[0]:  # `rank(x)` then `push(x)`: the same bin
            return last[1]
        if x <= 0.0:
            return 0
        k = math.floor(math.log(x) / self.log_gamma)
        if self.base is None:
            self.base = k - self.bins // 2
        i = k - self.base
        i = 1 if i < 1 else self.bins - 1 if i >= self.bins else i
        self._last = (x, i)
        return i

    def _add(self, i: int, c: int) -> None:
        self.cnt[i] += c
        self.n += c
        tree, j, n = self.tree, i + 1, self.bins
        while j <= n:
            tree[j] += c
            j += j & -j

    def _below(self, i: int) -> int:
        """The count of bins 0 .. i-1."""
        tree, s = self.tree, 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    def _settle(self) -> None:
        """Drop the exclusions that left the window; `open_above` = the highest left."""
        expired = self.pushes - self.window
        excluded = self.excluded
        for b in [b for b, at in excluded.items() if at <= expired]:
            del excluded[b]
        self.open_above = max(excluded, default=-1)

    def exact(self, x: float) -> bool:
        """Whether `x` ranks exactly as in the window (its bin above every excluded one)."""
        return bool(self.top_v) and self._bin(x) > self.open_above

    def rank(self, x: float) -> float:
        top = self.top_v
        i = self._bin(x)
        if top and i > self.open_above:
            m = min(self.pushes, self.window)
            return (m - len(top) + bisect_left(top, x)) / m
        n = self.n
        if not n:
            return 0.0
        tree, j, below = self.tree, i, 0  # `_below(i)`, inline
        while j > 0:
            below += tree[j]
            j -= j & -j
        return (below + 0.5 * self.cnt[i]) / n

    def push(self, x: float) -> None:
        if self.pushes % self.size == 0:  # a new block begins
            if len(self.blocks) == self.max_blocks:
                old = self.blocks.popleft()
                if self._trimmed:
                    self._trimmed.popleft()
                for i, c in enumerate(old):
                    if c:
                        self._add(i, -c)
            self.blocks.append(self._block())
        self.pushes = p = self.pushes + 1
        i = self._bin(x)
        self.blocks[-1][i] += 1
        self.cnt[i] += 1  # `_add(i, 1)`, inline: this runs per reading
        self.n += 1
        tree, j, bins = self.tree, i + 1, self.bins
        while j <= bins:
            tree[j] += 1
            j += j & -j
        top_v = self.top_v
        expired = p - self.window
        if len(top_v) < self.tail or x > top_v[0] or self.next_expiry <= expired:
            self._push_top(x, i)
            return
        # The common case: `x` stays out of a full top that loses nothing now, so it is its
        # bin's latest exclusion (`_push_top`'s last lines).
        excluded = self.excluded
        excluded[i] = p
        self.open_above = max(self.open_above, i)
        if excluded[self.open_above] <= expired:
            self._settle()

    def _push_top(self, x: float, i: int) -> None:
        top_v, top_at = self.top_v, self.top_at
        p = self.pushes
        expired = p - self.window
        if top_at and self.next_expiry <= expired:
            keep = [k for k, at in enumerate(top_at) if at > expired]
            self.top_v = top_v = [top_v[k] for k in keep]
            self.top_at = top_at = [top_at[k] for k in keep]
            self.next_expiry = min(top_at, default=0)
        if len(top_v) < self.tail or x > top_v[0]:
            k = bisect_left(top_v, x)
            top_v.insert(k, x)
            top_at.insert(k, p)
            if len(top_at) == 1:
                self.next_expiry = p
            if len(top_v) <= self.tail:
                i = -1  # nothing left out
            else:
                x, at = top_v[0], top_at[0]
                del top_v[0], top_at[0]
                if at == self.next_expiry:
                    self.next_expiry = min(top_at)
                i = self._bin(x)
        else:
            at = p
        if i >= 0:
            excluded = self.excluded
            excluded[i] = max(excluded.get(i, 0), at)
            self.open_above = max(self.open_above, i)
        open_above = self.open_above
        if open_above >= 0 and self.excluded[open_above] <= expired:
            self._settle()

    def _used(self) -> list[tuple[int, int, bytearray | array[int]]]:
        """Per block: its zero count, its lowest bin above 0 with a count and its counts up
        to its highest. The blocks before the newest no longer change: theirs are cached."""
        cache, blocks = self._trimmed, self.blocks
        for k in range(len(cache), len(blocks) - 1):
            cache.append(self._trim(blocks[k]))
        return [*cache, self._trim(blocks[-1])] if blocks else []

    def _trim(self, block: bytearray | array[int]) -> tuple[int, int, bytearray | array[int]]:
        width = 2 if self.wide else 1
        rest = block[1:]
        raw = rest.tobytes() if isinstance(rest, array) else rest
        # zero counts are zero bytes whatever the byte order
        lo = (len(raw) - len(raw.lstrip(b"\0"))) // width
        hi = (len(raw.rstrip(b"\0")) + width - 1) // width
        return (block[0], lo + 1, rest[lo:hi]) if hi > lo else (block[0], 1, rest[:0])

    def state(self) -> tuple[Any, ...]:
        """(bin offset, readings pushed, per block (zero count, lowest bin, counts up to the
        highest), the top (values ascending, arrivals), the exclusions (bin, arrival))."""
        return (
            self.base,
            self.pushes,
            tuple((zero, lo, tuple(counts)) for zero, lo, counts in self._used()),
            (tuple(self.top_v), tuple(self.top_at)),
            tuple(self._exclusions()),
        )

    def _exclusions(self) -> list[tuple[int, int]]:
        """(bin, latest arrival) of the exclusions still in the window (expired ones may
        linger below `open_above` until it moves), by bin."""
        expired = self.pushes - self.window
        return sorted((b, at) for b, at in self.excluded.items() if at > expired)

    def pack(self) -> tuple[Any, ...]:
        """`state()` with the counts (one byte each while a block holds at most 255 readings),
        the top's ages (readings ago), the excluded bins and their ages as packed integers,
        the top's values as packed doubles."""
        pushes = self.pushes
        if self.wide:
            blocks = tuple((z, lo, b"H" + _le(array("H", c))) for z, lo, c in self._used())
        else:
            blocks = tuple((z, lo, b"B" + bytes(c)) for z, lo, c in self._used())
        excluded = self._exclusions()
        return (
            self.base,
            pushes,
            blocks,
            (pack_floats(self.top_v), pack_ints([pushes - at for at in self.top_at])),
            (pack_ints([b for b, _ in excluded]), pack_ints([pushes - at for _, at in excluded])),
        )

    @staticmethod
    def unpack(packed: tuple[Any, ...]) -> tuple[Any, ...]:
        base, pushes, blocks, (values, ages), (bins, excluded_ages) = packed
        return (
            base,
            pushes,
            tuple((z, lo, tuple(unpack_ints(counts))) for z, lo, counts in blocks),
            (tuple(unpack_floats(values)), tuple(pushes - age for age in unpack_ints(ages))),
            tuple(
                zip(
                    unpack_ints(bins),
                    (pushes - age for age in unpack_ints(excluded_ages)),
                    strict=True,
                )
            ),
        )


class SeasonalResidual:
    """Deviation of a value from its time-of-day baseline, ranked against recent deviations.

    The day is cut into `slots` slots (event time); each slot keeps an exponentially weighted
    mean of the values that fell in it. The residual of a value is its distance to its slot's
    mean; the score is the residual's rank among the last `window` residuals (so it is scale
    free: 1.0 means "further from its usual level than anything recently"). Series with no
    daily pattern get a slowly moving baseline per slot, so this still flags level changes.

    State: the slot means (at most `slots` floats) and the ranking window.
    """

    __slots__ = ("alpha", "period", "rank", "slot_mean", "slots")

    def __init__(
        self,
        slots: int = 288,
        alpha: float = 0.25,
        window: int = 1500,
        period_s: float = 86400.0,
        state: tuple[Any, ...] | None = None,
        rank: WindowSketch | None = None,
    ) -> None:
        """`rank`: rank residuals with this sketch instead of an exact window of `window`
        (the sketch then carries its own state and `state`'s ranking window is ignored)."""
        self.slots = slots
        self.alpha = alpha
        self.period = period_s
        means, ranks = state or ((), ())
        self.slot_mean: dict[int, float] = dict(means)
        self.rank: Rank | WindowSketch = Rank(window, ranks) if rank is None else rank

    def _slot(self, ts: float) -> int:
        return int((ts % self.period) / self.period * self.slots)

    def baseline(self, ts: float) -> float | None:
        """The usual value at this time of day (None before the slot has seen a value)."""
        return self.slot_mean.get(self._slot(ts))

    def update(self, x: float, ts: float) -> float:
        return self.update_coded(x, ts)[0]

    def update_coded(self, x: float, ts: float) -> tuple[float, int]:
        """`update`, and the score's `RankTape` code: the count of residuals in the window
        below this one (the score is that count over the window's length), or `UNRANKED` for
        a slot's first value, which scores 0 and joins no window."""
        slot = self._slot(ts)
        mean = self.slot_mean.get(slot)
        if mean is None:
            self.slot_mean[slot] = x
            return 0.0, UNRANKED
        r = abs(x - mean)
        rank = self.rank
        if isinstance(rank, WindowSketch):
            score, below = rank.rank(r), 0
        else:
            below = rank.below(r)
            n = len(rank)
            score = below / n if n else 0.0
        rank.push(r)
        self.slot_mean[slot] = mean + self.alpha * (x - mean)
        return score, below

    def state(self) -> tuple[Any, ...]:
        return (tuple(self.slot_mean.items()), self.rank.state())

    def pack(self) -> tuple[bytes, bytes, Any]:
        """`state()` packed: a bit mask of the slots that have a mean, their means in slot
        order, the ranking window."""
        slots = sorted(self.slot_mean)
        mask = 0
        for slot in slots:
            mask |= 1 << slot
        width = slots[-1] // 8 + 1 if slots else 0
        means = pack_floats([self.slot_mean[slot] for slot in slots])
        return (mask.to_bytes(width, "little"), means, self.rank.pack())

    @staticmethod
    def unpack(packed: tuple[bytes, bytes, Any], sketched: bool = False) -> tuple[Any, ...]:
        """The `state()` layout of a `pack()` (`sketched`: of a detector ranking with a
        `WindowSketch`, whose packed state is returned as it is)."""
        mask_bytes, means, ranks = packed
        mask = int.from_bytes(mask_bytes, "little")
        slots = [i for i in range(8 * len(mask_bytes)) if mask >> i & 1]
        pairs = tuple(zip(slots, unpack_floats(means), strict=True))
        return (pairs, ranks if sketched else unpack_floats(ranks))


class RankShift:
    """A sustained shift in a stream of ranks (change detection on conformal p-values).

    Fed the seasonal residual's rank r in [0, 1) per reading, it averages the surprise
    -ln(1 - r) over the last `span` readings (under "nothing changed" the ranks are about
    uniform, so each surprise is about Exp(1) and the mean is near 1; a level or variance shift
    keeps many ranks high and drives it up, even when no single reading is extreme). Real
    residuals are autocorrelated, so the mean is not compared with a fixed bound but ranked
    against its own last `window` values: 1.0 means "the most sustained deviation recently".
    The first `span` readings only fill the average.

    State: the last `span` surprises, their sum, the count and the ranking window.
    """

    __slots__ = ("n", "rank", "ring", "span", "total")

    _FLOOR = 1e-4  # caps one reading's surprise at ln(1e4) ~ 9.2

    def __init__(
        self,
        span: int = 30,
        window: int = 3000,
        state: tuple[Any, ...] | None = None,
        rank: WindowSketch | None = None,
    ) -> None:
        """`rank`: rank the means with this sketch instead of an exact window (as in
        `SeasonalResidual`)."""
        self.span = span
        ring, total, n, ranks = state or ((), 0.0, 0, ())
        self.ring: deque[float] = deque(ring, maxlen=span)
        self.total: float = total
        self.n: int = n
        self.rank: Rank | WindowSketch = Rank(window, ranks) if rank is None else rank

    def update(self, r: float) -> float:
        mean = self.advance(self.surprise(r))
        if mean is None:
            return 0.0
        score = self.rank.rank(mean)
        self.rank.push(mean)
        return score

    @staticmethod
    def surprise(r: float, _log: Any = math.log, _floor: float = _FLOOR) -> float:
        """A rank's surprise -ln(1 - r), capped (the defaults bind the names once: this runs
        per reading and per code of a replay)."""
        d = 1.0 - r
        return -_log(d if d > _floor else _floor)

    def advance(self, z: float) -> float | None:
        """Fold one surprise into the running sum, without ranking: the mean of the last
        `span` surprises, or None while fewer have come. `update` and a `RankTape` replay
        both go through here, so both add and subtract the same floats in the same order."""
        ring = self.ring
        if len(ring) == self.span:
            self.total -= ring[0]
        ring.append(z)
        self.total += z
        self.n += 1
        if self.n <= self.span:
            return None
        return self.total / self.span

    def state(self) -> tuple[Any, ...]:
        return (tuple(self.ring), self.total, self.n, self.rank.state())


_CHECKPOINT_EVERY = 64
"""Readings between two `RankTape` checkpoints: at most this many codes more per snapshot,
and one (reading, total) pair per interval of the window held in memory."""


class RankTape:
    """The ranks a `RankShift` was fed, 2 bytes a reading: all it takes to rebuild it exactly.

    The ensemble's shift detector is fed the rank k / n of each seasonal residual: k residuals
    of the n in the seasonal window are below it (or 0 for a slot's first value, which is not
    ranked). The tape keeps k (or `UNRANKED`) as one 16-bit code per reading (k <= n <=
    `ranked`, the seasonal window's length, at most 20,000); n is not kept: it is `n0` at the
    first code and grows by one after each ranked code until the window is full. So the
    tape gives back every rank bit for bit, and replaying them through `RankShift.advance`
    from a checkpoint (a reading c and the shift's running total after it) repeats the live
    detector's float operations in the same order: the same ring, total and window of means.

    A checkpoint is taken every `_CHECKPOINT_EVERY` readings. The tape starts `span` readings
    before the newest checkpoint from which a replay still regenerates the whole window of
    means (c <= max(span, readings - window)), so it holds at most window + span +
    `_CHECKPOINT_EVERY` codes. A tape started on a detector that has history but no tape (one
    resumed from an older snapshot) carries that detector's ring and means explicitly
    (`ring0`, `means0`) until a checkpoint after it can be used.

    State (`pack()`): the parameters, the first code's reading and seasonal window length, the
    codes, the checkpoint and the explicit ring and means (empty once the tape covers them).
    """

    __slots__ = (
        "base",
        "codes",
        "means0",
        "n0",
        "pending",
        "ranked",
        "ring0",
        "span",
        "start",
        "window",
    )

    def __init__(
        self,
        span: int,
        window: int,
        ranked: int,
        start: int,
        n0: int,
        codes: array[int],
        base: tuple[int, float],
        ring0: tuple[float, ...] = (),
        means0: Sequence[float] = (),
    ) -> None:
        self.span = span
        self.window = window  # the shift detector's window of means
        self.ranked = ranked  # the seasonal window the codes count in
        self.start = start  # reading number (1 = the series' first) of codes[0]
        self.n0 = n0  # length of the seasonal window when codes[0] was ranked
        self.codes = codes
        self.base = base
        self.ring0 = ring0
        self.means0 = array("d", means0)
        # Checkpoints after `base`, not usable yet (a replay from them misses part of the
        # window); not snapshotted: a replay from `base` passes them and takes them again.
        self.pending: deque[tuple[int, float]] = deque()

    @classmethod
    def after(cls, shift: RankShift, ranked: int, n0: int) -> RankTape:
        """A tape for `shift` from its next reading on (`n0`: the seasonal window's length)."""
        rank = shift.rank
        assert isinstance(rank, Rank), "a sketched shift detector needs no tape"
        return cls(
            shift.span,
            rank.window,
            ranked,
            shift.n + 1,
            n0,
            array("H"),
            (shift.n, shift.total),
            tuple(shift.ring),
            rank.state(),
        )

    def record(self, code: int, shift: RankShift) -> None:
        """Append the code of the rank `shift` has just been updated with."""
        self.codes.append(code)
        self._checkpoint(shift)
        # A replay from checkpoint c regenerates the window of means if c <= limit.
        limit = max(self.span, shift.n - self.window)
        pending = self.pending
        if pending and pending[0][0] <= limit:
            self._rebase(limit)

    def _checkpoint(self, shift: RankShift) -> None:
        n = shift.n
        # In reach only if its ring (the `span` readings up to it) is on the tape.
        if n % _CHECKPOINT_EVERY == 0 and max(n - self.span, 0) + 1 >= self.start:
            self.pending.append((n, shift.total))

    def _rebase(self, limit: int) -> None:
        """Move to the newest checkpoint at or before `limit` and drop the codes before it."""
        pending = self.pending
        while pending and pending[0][0] <= limit:
            self.base = pending.popleft()
        self.ring0, self.means0 = (), array("d")
        start = max(self.base[0] - self.span, 0) + 1
        drop = start - self.start
        n0, cap = self.n0, self.ranked
        for code in self.codes[:drop]:
            if code != UNRANKED and n0 < cap:
                n0 += 1
        del self.codes[:drop]
        self.n0, self.start = n0, start

    def resume(self) -> RankShift:
        """The `RankShift` the codes were recorded from, as it stands after the last one.

        Replays the codes after the checkpoint and takes the checkpoints after it again, so
        this tape goes on exactly as the live one would.
        """
        zs = list(map(RankShift.surprise, self._ranks()))
        c, total = self.base
        k = c - self.start + 1  # codes up to the checkpoint: its ring (none in `ring0` mode)
        shift = RankShift(self.span, self.window, ((*self.ring0, *zs[:k]), total, c, ()))
        self.pending.clear()
        means = list(self.means0)
        advance = shift.advance
        # Checkpoint-sized segments: `_checkpoint` only needs to look where one may fall.
        while k < len(zs):
            step = _CHECKPOINT_EVERY - shift.n % _CHECKPOINT_EVERY
            means.extend(m for m in map(advance, zs[k : k + step]) if m is not None)
            k += step
            self._checkpoint(shift)
        shift.rank = Rank(self.window, means)
        return shift

    def _ranks(self) -> list[float]:
        """The ranks the codes stand for, k / n, as `SeasonalResidual.update_coded` scored."""
        n, cap = self.n0, self.ranked
        if n == cap:  # the seasonal window was full from the first code on (a warmed series)
            return [0.0 if code == UNRANKED else code / cap for code in self.codes]
        ranks = []
        for code in self.codes:
            if code == UNRANKED:
                ranks.append(0.0)
                continue
            ranks.append(code / n if n else 0.0)
            if n < cap:
                n += 1
        return ranks

    def pack(self) -> tuple[Any, ...]:
        c, total = self.base
        return (
            self.span,
            self.window,
            self.ranked,
            self.start,
            self.n0,
            _le(self.codes),
            c,
            total,
            pack_floats(self.ring0),
            pack_floats(self.means0),
        )

    @classmethod
    def unpack(cls, packed: tuple[Any, ...]) -> RankTape:
        span, window, ranked, start, n0, codes, c, total, ring0, means0 = packed
        return cls(
            span,
            window,
            ranked,
            start,
            n0,
            _from_le(array("H"), codes),
            (c, total),
            tuple(unpack_floats(ring0)),
            unpack_floats(means0),
        )
