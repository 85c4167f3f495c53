"""`WindowSketch`: the exact `Rank` of the same sliding window for its largest values, close
below them, bounded, and resumed exactly from its packed state."""

from __future__ import annotations

import pickle
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.anomaly.detectors import Rank, WindowSketch

values = st.one_of(
    st.floats(0.0, 1e6, allow_nan=False),
    st.sampled_from([0.0, 1.0, 2.5, 1e-9]),  # ties and zeros, as flat series give
)


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(values, min_size=1, max_size=400),
    window=st.integers(5, 120),
    blocks=st.integers(1, 12),
    tail=st.integers(1, 20),
)
def test_ranks_of_the_largest_values_are_the_exact_windows(
    xs: list[float], window: int, blocks: int, tail: int
) -> None:
    sketch, exact = WindowSketch(0.1, window, blocks, tail), Rank(window)
    for x in xs:
        for y in (x, 2.0 * x + 1.0):  # the value, and a new extreme
            if sketch.exact(y):
                assert sketch.rank(y) == exact.rank(y)
        sketch.push(x)
        exact.push(x)
        assert len(sketch.top_v) <= tail and len(sketch.blocks) <= blocks
        size = -(-window // blocks)
        assert window - size <= len(sketch) or len(sketch) == sketch.pushes
        assert len(sketch) <= blocks * size
        # Every window value in a bin above the excluded ones is in the top, and so is the
        # window's largest.
        window_values = exact.state()
        open_values = sorted(v for v in window_values if sketch._bin(v) > sketch.open_above)
        assert open_values == [v for v in sketch.top_v if sketch._bin(v) > sketch.open_above]
        if not sketch.excluded:
            assert sketch.top_v == sorted(window_values)  # all of it fits in the top


def test_ranks_below_the_tail_are_within_a_bin_and_a_block() -> None:
    rnd = random.Random(5)
    window, blocks = 3000, 16
    sketch, exact = WindowSketch(0.1, window, blocks, 64), Rank(window)
    worst = 0.0
    for i in range(12_000):
        x = rnd.lognormvariate(0.0, 1.5) * (3.0 if i > 6000 else 1.0)  # a level shift too
        if i > window:
            worst = max(worst, abs(sketch.rank(x) - exact.rank(x)))
        sketch.push(x)
        exact.push(x)
    # Half a bin (gamma = 1.22: about a twentieth of the readings here) and one block's.
    assert worst <= 0.05 + 1 / blocks


def test_packed_state_resumes_exactly() -> None:
    rnd = random.Random(2)
    for window, blocks in ((3000, 16), (6000, 4)):  # one-byte counts, then two-byte ones
        live = WindowSketch(0.1, window, blocks, 64)
        xs = [rnd.expovariate(1.0) if rnd.random() < 0.9 else 0.0 for _ in range(2 * window)]
        for x in xs[: window + 77]:
            live.push(x)
        packed = pickle.loads(pickle.dumps(live.pack()))
        back = WindowSketch(0.1, window, blocks, 64, state=WindowSketch.unpack(packed))
        assert back.state() == live.state()
        for x in xs[window + 77 :]:
            assert back.rank(x) == live.rank(x)
            back.push(x)
            live.push(x)
        assert back.state() == live.state()
        assert len(pickle.dumps(live.pack())) <= 3000
