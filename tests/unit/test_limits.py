"""Unit tests of `inference.limits`: token buckets, adaptive concurrency, circuit breaker, limiter.

The pure classes take the time as an argument; `Limiter` gets a fake clock. Threads appear only
where `Limiter.acquire` must be seen to block: the test advances the fake clock and wakes the
waiters itself, so no test sleeps for the clock's sake.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.limits import (
    AdaptiveConcurrency,
    BreakerState,
    CircuitBreaker,
    Limiter,
    Outcome,
    TokenBucket,
    parse_reset,
)

BLOCKED_S = 0.1  # how long a waiter must stay blocked to count as blocked
PROCEED_S = 0.5  # how long a woken waiter may take to get through


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- TokenBucket ----------------------------------------------------------------------------

K = AdaptiveConcurrency(cap=1).increase_every
"""The default additive-increase constant (round trips per +1 of the limit)."""


def test_bucket_starts_full() -> None:
    b = TokenBucket(capacity=10, rate=1, now=100.0)
    assert b.tokens == 10
    assert b.wait_time(10, 100.0) == 0.0
    assert b.wait_time(1, 100.0) == 0.0


def test_bucket_wait_time_for_amount_over_available() -> None:
    b = TokenBucket(capacity=10, rate=2, now=0.0)
    b.take(8, 0.0)  # 2 left
    assert b.wait_time(2, 0.0) == 0.0
    assert b.wait_time(5, 0.0) == pytest.approx(1.5)  # 3 missing at 2/s
    assert b.wait_time(10, 0.0) == pytest.approx(4.0)


def test_bucket_refills_over_time_capped_at_capacity() -> None:
    b = TokenBucket(capacity=10, rate=2, now=0.0)
    b.take(10, 0.0)
    assert b.tokens == 0
    b.wait_time(1, 1.5)  # refills as a side effect
    assert b.tokens == pytest.approx(3.0)
    b.wait_time(1, 1000.0)
    assert b.tokens == 10
    assert b.wait_time(10, 1000.0) == 0.0


def test_bucket_does_not_refill_backwards_in_time() -> None:
    b = TokenBucket(capacity=10, rate=1, now=50.0)
    b.take(10, 50.0)
    b.wait_time(1, 40.0)
    assert b.tokens == 0
    assert b.updated == 50.0


def test_bucket_take_can_go_negative_and_wait_reflects_the_debt() -> None:
    b = TokenBucket(capacity=10, rate=2, now=0.0)
    b.take(16, 0.0)
    assert b.tokens == -6
    # 6 of debt plus the 1 wanted, at 2 tokens/s.
    assert b.wait_time(1, 0.0) == pytest.approx(3.5)
    assert b.wait_time(1, 3.5) == 0.0


def test_bucket_amount_over_capacity_waits_only_for_a_full_bucket() -> None:
    """A request larger than the bucket would never fit: it goes when the bucket is full."""
    b = TokenBucket(capacity=10, rate=1, now=0.0)
    assert b.wait_time(25, 0.0) == 0.0
    b.take(25, 0.0)
    assert b.wait_time(25, 0.0) == pytest.approx(25.0)  # 15 of debt, then 10 to fill


def test_bucket_give_back_is_capped_at_capacity() -> None:
    b = TokenBucket(capacity=10, rate=1, now=0.0)
    b.take(4, 0.0)
    b.give_back(3)
    assert b.tokens == 9
    b.give_back(100)
    assert b.tokens == 10
    b.give_back(-5)  # used more than reserved: charged
    assert b.tokens == 5


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(min_value=1.0, max_value=1000.0),
    rate=st.floats(min_value=0.01, max_value=100.0),
    ops=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=100.0),  # idle gap before the request
            st.floats(min_value=0.001, max_value=1.0),  # amount as a fraction of capacity
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_bucket_property_window_never_exceeds_capacity_plus_refill(
    capacity: float, rate: float, ops: list[tuple[float, float]]
) -> None:
    """Takes that each waited their `wait_time` take at most capacity + rate x window."""
    b = TokenBucket(capacity, rate, now=0.0)
    now = 0.0
    taken: list[tuple[float, float]] = []
    for gap, fraction in ops:
        amount = fraction * capacity
        now += gap
        now += b.wait_time(amount, now)
        b.take(amount, now)
        taken.append((now, amount))
    for i, (start, _) in enumerate(taken):
        total = 0.0
        for end, amount in taken[i:]:
            total += amount
            bound = capacity + rate * (end - start)
            assert total <= bound * (1 + 1e-9), (start, end, total, bound)


# --- AdaptiveConcurrency --------------------------------------------------------------------


def after_slow_start(limit: float, cap: int = 100) -> AdaptiveConcurrency:
    """A limiter past slow start at `limit`, with a round trip of 0.25 s."""
    a = AdaptiveConcurrency(cap)
    a.slow_start = False
    a.limit = limit
    a.rtt = 0.25
    return a


def test_adaptive_starts_at_initial_capped_by_cap() -> None:
    assert AdaptiveConcurrency(cap=10).current == 2
    assert AdaptiveConcurrency(cap=10, initial=4).current == 4
    assert AdaptiveConcurrency(cap=3, initial=8).current == 3


def test_adaptive_slow_start_adds_one_per_success() -> None:
    a = AdaptiveConcurrency(cap=100)
    for expected in range(3, 10):
        a.on_success(0.1)
        assert a.current == expected
    assert a.slow_start is True


def test_adaptive_slow_start_doubles_per_round_trip_up_to_cap() -> None:
    a = AdaptiveConcurrency(cap=50)
    seen = [a.current]
    for _ in range(7):
        for _ in range(a.current):  # one round trip: `current` requests succeed
            a.on_success(0.1)
        seen.append(a.current)
    assert seen == [2, 4, 8, 16, 32, 50, 50, 50]
    assert a.limit <= a.cap


def test_adaptive_first_429_leaves_slow_start_at_what_was_accepted() -> None:
    a = AdaptiveConcurrency(cap=100, initial=16)
    a.on_rate_limited(now=10.0, accepted=11)
    assert a.slow_start is False
    assert a.current == 11


def test_adaptive_first_429_is_capped_by_the_current_limit() -> None:
    a = AdaptiveConcurrency(cap=100, initial=8)
    a.on_rate_limited(now=10.0, accepted=40)
    assert a.slow_start is False
    assert a.current == 8


@pytest.mark.parametrize("accepted", [0, 1])
def test_adaptive_first_429_keeps_at_least_one(accepted: int) -> None:
    a = AdaptiveConcurrency(cap=100, initial=8)
    a.on_rate_limited(now=10.0, accepted=accepted)
    assert a.limit == 1.0
    assert a.current == 1


def test_adaptive_additive_increase_after_slow_start() -> None:
    a = after_slow_start(10.0)
    a.on_success(0.25)
    assert a.limit == pytest.approx(10.0 + 1 / (K * 10.0))
    b = after_slow_start(10.0)
    b.increase_every = 2.0
    b.on_success(0.25)
    assert b.limit == pytest.approx(10.0 + 1 / (2.0 * 10.0))


def test_adaptive_additive_increase_is_about_one_per_increase_every_round_trips() -> None:
    a = after_slow_start(20.0)
    for _ in range(int(K)):  # increase_every round trips of `current` successes
        for _ in range(a.current):
            a.on_success(0.25)
    assert a.limit == pytest.approx(21.0, abs=0.05)


def test_adaptive_additive_increase_never_exceeds_cap() -> None:
    a = after_slow_start(9.99, cap=10)
    for _ in range(1000):
        a.on_success(0.25)
    assert a.limit == 10
    assert a.current == 10


def test_adaptive_multiplicative_decrease_on_429() -> None:
    a = after_slow_start(20.0)
    a.on_rate_limited(now=100.0, accepted=20)
    assert a.limit == pytest.approx(18.0)
    b = after_slow_start(20.0)
    b.decrease_factor = 0.5
    b.on_rate_limited(now=100.0, accepted=20)
    assert b.limit == pytest.approx(10.0)


def test_adaptive_decrease_never_below_one() -> None:
    a = after_slow_start(1.5)
    for k in range(20):
        a.on_rate_limited(now=100.0 + k, accepted=1)
    assert a.limit == 1.0
    assert a.current == 1


def test_adaptive_burst_of_429s_within_one_round_trip_decreases_once() -> None:
    a = after_slow_start(20.0)
    a.rtt = 0.0
    a.on_success(0.25)  # the cooldown is the latency EWMA: 0.25 s
    assert a.rtt == 0.25
    a.on_rate_limited(now=100.0, accepted=20)
    for now in (100.0, 100.0625, 100.125, 100.24):
        a.on_rate_limited(now=now, accepted=20)
    assert a.limit == pytest.approx((20.0 + 1 / (K * 20)) * 0.9)
    a.on_rate_limited(now=100.25, accepted=20)  # one round trip later: a new signal
    assert a.limit == pytest.approx((20.0 + 1 / (K * 20)) * 0.81)


def test_adaptive_slow_start_exit_settles_on_the_burst_then_shares_the_cooldown() -> None:
    """Slow start's last window went out as a burst: its later 429s (fewer accepted each
    time) cap the limit during the round trip after the exit; then one decrease per trip."""
    a = AdaptiveConcurrency(cap=100, initial=16)
    a.on_success(0.25)
    a.on_rate_limited(now=10.0, accepted=12)
    assert a.current == 12
    a.on_rate_limited(now=10.125, accepted=9)  # same round trip: the burst overshot further
    assert a.current == 9
    a.on_rate_limited(now=10.3, accepted=9)  # past the settling trip, within the cooldown
    assert a.current == 9
    a.on_rate_limited(now=10.4, accepted=9)  # a round trip after the last cut: a new signal
    assert a.limit == pytest.approx(9 * 0.9)


def test_adaptive_cooldown_is_at_least_50_ms() -> None:
    a = after_slow_start(20.0)
    a.rtt = 0.0
    a.on_success(0.001)
    a.on_rate_limited(now=1.0, accepted=20)
    a.on_rate_limited(now=1.03125, accepted=20)  # 31 ms later: the same burst
    assert a.limit == pytest.approx((20.0 + 1 / (K * 20)) * 0.9)
    a.on_rate_limited(now=1.0625, accepted=20)  # 62.5 ms later: a new signal
    assert a.limit == pytest.approx((20.0 + 1 / (K * 20)) * 0.81)


def test_adaptive_rtt_is_an_ewma_of_latency() -> None:
    a = AdaptiveConcurrency(cap=10)
    assert a.rtt == 0.0
    a.on_success(1.0)
    assert a.rtt == 1.0
    a.on_success(0.5)
    assert a.rtt == pytest.approx(0.9)


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(min_value=1, max_value=200),
    initial=st.integers(min_value=1, max_value=300),
    events=st.lists(
        st.tuples(
            st.booleans(),  # True: success, False: 429
            st.floats(min_value=0.0, max_value=2.0),  # latency, or time since the last event
            st.integers(min_value=0, max_value=400),  # in flight
        ),
        max_size=200,
    ),
)
def test_adaptive_property_current_is_an_int_between_one_and_cap(
    cap: int, initial: int, events: list[tuple[bool, float, int]]
) -> None:
    a = AdaptiveConcurrency(cap, initial=initial)
    now = 0.0
    for ok, dt, inflight in events:
        if ok:
            a.on_success(dt)
        else:
            now += dt
            a.on_rate_limited(now, inflight)
        assert isinstance(a.current, int)
        assert 1 <= a.current <= cap


@dataclass
class SimResult:
    limits: list[float]  # the limit at the start of each round after the warm-up
    currents: list[int]
    sent: int
    rate_limited: int


def simulate(capacity: int, *, rounds: int = 400, warmup: int = 50) -> SimResult:
    """A server that takes `capacity` concurrent requests and answers 429 beyond.

    Each round sends `current` requests at once. The 429s come back first (a refusal is
    immediate), each while the rest are still in flight; the others succeed after `latency`.
    The clock then advances by `latency`, a power of two so the times stay exact.
    """
    latency = 0.25
    a = AdaptiveConcurrency(cap=256)
    now = 0.0
    out = SimResult([], [], 0, 0)
    for k in range(rounds):
        n = a.current
        accepted = min(n, capacity)
        refused = n - accepted
        if k >= warmup:
            out.limits.append(a.limit)
            out.currents.append(n)
            out.sent += n
            out.rate_limited += refused
        inflight = n
        for _ in range(refused):
            a.on_rate_limited(now, inflight - 1)  # the others, not refused (yet)
            inflight -= 1
        for _ in range(accepted):
            a.on_success(latency)
            inflight -= 1
        now += latency
    return out


@pytest.mark.parametrize("capacity", [4, 8, 16, 32])
def test_adaptive_simulation_limit_settles_near_capacity(capacity: int) -> None:
    r = simulate(capacity)
    low, high = capacity * 0.8, capacity + 2
    assert low <= min(r.limits) and max(r.limits) <= high, (min(r.limits), max(r.limits))
    assert low <= min(r.currents) and max(r.currents) <= high


@pytest.mark.parametrize("capacity", [4, 8, 16, 32])
def test_adaptive_simulation_429_share_under_5_percent(capacity: int) -> None:
    r = simulate(capacity)
    share = r.rate_limited / r.sent
    assert share < 0.05, f"{r.rate_limited} of {r.sent} requests got 429 ({share:.1%})"


def simulate_queueing(
    capacity: int,
    *,
    service_s: float = 0.5,
    tolerance: float | None = 1.0,
    rounds: int = 300,
    warmup: int = 100,
    cap: int = 64,
) -> list[int]:
    """A server of `capacity` slots that queues the rest (never a 429): the limit per round.

    Each round sends `current` requests at once; they are served in waves of `capacity`, the
    k-th wave answered after k x `service_s`, and reported in that order.
    """
    a = AdaptiveConcurrency(cap=cap, tolerance=tolerance)
    currents = []
    for k in range(rounds):
        n = a.current
        if k >= warmup:
            currents.append(n)
        for i in range(n):
            a.on_success(service_s * (i // capacity + 1))
    return currents


@pytest.mark.parametrize("capacity", [1, 2, 4, 8, 16])
def test_gradient_limit_settles_near_a_queueing_servers_capacity(capacity: int) -> None:
    """No 429 ever: latency growth alone keeps the limit at capacity + the queue allowance."""
    currents = simulate_queueing(capacity)
    queue = AdaptiveConcurrency(cap=1).queue
    assert capacity <= min(currents), currents
    assert max(currents) <= capacity + queue + 1, currents


def test_gradient_tolerance_allows_that_much_latency_growth() -> None:
    currents = simulate_queueing(4, tolerance=1.5)
    assert min(currents) >= 4 and max(currents) <= 1.5 * 4 + 2 + 1, currents


def test_without_the_gradient_a_queueing_server_is_flooded_to_the_cap() -> None:
    """The AIMD alone never hears a 429 from a queueing server: it sends everything."""
    assert set(simulate_queueing(4, tolerance=None)) == {64}


def test_gradient_lets_a_fast_server_grow_to_the_cap() -> None:
    a = AdaptiveConcurrency(cap=64)
    for _ in range(500):
        a.on_success(0.5)
    assert a.current == 64
    assert a.gradient_decreases == 0


def test_gradient_ignores_latency_noise_within_the_tolerance() -> None:
    a = AdaptiveConcurrency(cap=64, tolerance=1.5)
    for k in range(2000):
        a.on_success(0.5 + 0.2 * ((k * 7919) % 10) / 10)  # 0.5 .. 0.68 s
    assert a.current == 64


def test_gradient_ignores_growth_of_latencies_under_the_noload_floor() -> None:
    """Milliseconds of extra latency are the client's own load, not a server's queue."""
    a = AdaptiveConcurrency(cap=32, tolerance=1.0)
    for k in range(500):
        a.on_success(0.002 if k % 2 else 0.04)
    assert a.current == 32


def test_gradient_shrinks_when_latency_doubles_and_ends_slow_start() -> None:
    a = AdaptiveConcurrency(cap=64, initial=32, tolerance=1.0)
    a.on_success(1.0)
    assert a.slow_start and a.limit == 33
    a.on_success(3.0)  # rtt 1.4 s against 1.0 s: gradient 0.71, target 25.7
    assert not a.slow_start
    assert a.gradient() == pytest.approx(1 / 1.4)
    assert a.limit == pytest.approx(0.8 * 33 + 0.2 * (33 / 1.4 + 2))
    assert a.gradient_decreases == 1


def test_gradient_is_clamped_to_halve_at_most_per_sample() -> None:
    a = AdaptiveConcurrency(cap=64, initial=40, tolerance=1.0)
    a.on_success(0.1)
    a.on_success(100.0)
    assert a.gradient() == 0.5
    assert a.limit == pytest.approx(0.8 * 41 + 0.2 * (41 * 0.5 + 2))


def test_gradient_recovers_when_the_queue_drains() -> None:
    a = AdaptiveConcurrency(cap=64, tolerance=1.0)
    for _ in range(50):
        a.on_success(0.5)
    for _ in range(50):
        a.on_success(2.0)
    low = a.current
    for _ in range(3000):
        a.on_success(0.5)
    assert low < 10 and a.current > low + 5


def test_429s_still_decrease_multiplicatively_with_the_gradient_on() -> None:
    a = AdaptiveConcurrency(cap=100, decrease_factor=0.5, tolerance=1.0)
    a.slow_start = False
    a.limit = 40.0
    a.rtt = 0.25
    a.on_rate_limited(10.0, accepted=39)
    assert a.limit == 20.0
    a.on_rate_limited(10.5, accepted=19)
    assert a.limit == 10.0


def test_limiter_passes_the_gradient_settings(clock: FakeClock) -> None:
    lim = Limiter(
        cap=8,
        rpm=None,
        tpm=None,
        adaptive=True,
        failure_threshold=3,
        open_s=1.0,
        max_open_s=4.0,
        latency_tolerance=None,
        latency_queue=3.0,
        clock=clock,
    )
    assert lim.adaptive is not None
    assert lim.adaptive.tolerance is None and lim.adaptive.queue == 3.0


# --- CircuitBreaker -------------------------------------------------------------------------


def make_breaker(
    threshold: int = 3, open_s: float = 10.0, max_open_s: float = 35.0
) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=threshold, open_s=open_s, max_open_s=max_open_s)


def open_breaker(b: CircuitBreaker, now: float) -> None:
    for _ in range(b.failure_threshold):
        b.on_failure(now)
    assert b.state is BreakerState.OPEN


def test_breaker_starts_closed_and_lets_everything_through() -> None:
    b = make_breaker()
    assert b.state is BreakerState.CLOSED
    assert all(b.may_send(0.0) for _ in range(100))
    assert b.opened_count == 0


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    b = make_breaker(threshold=3)
    b.on_failure(0.0)
    b.on_failure(0.0)
    assert b.state is BreakerState.CLOSED
    assert b.may_send(0.0)
    b.on_failure(1.0)
    assert b.state is BreakerState.OPEN
    assert b.until == 11.0
    assert b.opened_count == 1


def test_breaker_success_resets_the_failure_count() -> None:
    b = make_breaker(threshold=3)
    for _ in range(5):
        b.on_failure(0.0)
        b.on_failure(0.0)
        b.on_success()
        assert b.failures == 0
    assert b.state is BreakerState.CLOSED
    assert b.opened_count == 0


def test_breaker_refuses_while_open() -> None:
    b = make_breaker()
    open_breaker(b, now=100.0)
    assert not b.may_send(100.0)
    assert not b.may_send(109.99)
    assert b.state is BreakerState.OPEN
    assert b.wait_time(104.0) == pytest.approx(6.0)
    assert b.wait_time(200.0) == 0.0


def test_breaker_half_open_lets_exactly_one_probe_through() -> None:
    b = make_breaker()
    open_breaker(b, now=100.0)
    assert b.may_send(110.0)
    assert b.state is BreakerState.HALF_OPEN
    assert b.probing is True
    assert not any(b.may_send(110.0 + k) for k in range(50))
    assert b.wait_time(120.0) == pytest.approx(0.05)  # check back soon for the probe


def test_breaker_probe_success_closes() -> None:
    b = make_breaker()
    open_breaker(b, now=100.0)
    assert b.may_send(110.0)
    b.on_success()
    assert b.state is BreakerState.CLOSED
    assert b.probing is False
    assert b.failures == 0
    assert all(b.may_send(110.0) for _ in range(5))


def test_breaker_probe_failure_reopens_with_doubled_time_capped() -> None:
    b = make_breaker(open_s=10.0, max_open_s=35.0)
    open_breaker(b, now=0.0)
    now = 0.0
    expected_open = [20.0, 35.0, 35.0]
    for k, open_s in enumerate(expected_open, start=2):
        now = b.until
        assert b.may_send(now)  # the probe
        b.on_failure(now)
        assert b.state is BreakerState.OPEN
        assert b.probing is False
        assert b.until == pytest.approx(now + open_s)
        assert b.opened_count == k
        assert not b.may_send(now + open_s - 0.01)


def test_breaker_success_resets_open_time_to_base() -> None:
    b = make_breaker(open_s=10.0, max_open_s=35.0)
    open_breaker(b, now=0.0)
    assert b.may_send(10.0)
    b.on_failure(10.0)  # reopened for 20 s
    assert b.may_send(30.0)
    b.on_success()
    open_breaker(b, now=100.0)
    assert b.until == 110.0
    assert b.opened_count == 3


def test_breaker_failures_while_open_do_not_reopen() -> None:
    """Late failures of requests sent before it opened leave the open time alone."""
    b = make_breaker()
    open_breaker(b, now=0.0)
    b.on_failure(5.0)
    b.on_failure(6.0)
    assert b.state is BreakerState.OPEN
    assert b.until == 10.0
    assert b.opened_count == 1


# --- parse_reset ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("1m30s", 90.0),
        ("0.5", 0.5),
        ("2", 2.0),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_parse_reset(value: str | None, seconds: float | None) -> None:
    got = parse_reset(value)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


# --- Limiter --------------------------------------------------------------------------------


T0 = 1000.0


def make_limiter(
    clock: FakeClock,
    *,
    cap: int = 8,
    rpm: int | None = None,
    tpm: int | None = None,
    adaptive: bool = False,
    failure_threshold: int = 3,
    open_s: float = 10.0,
    max_open_s: float = 60.0,
) -> Limiter:
    return Limiter(
        cap=cap,
        rpm=rpm,
        tpm=tpm,
        adaptive=adaptive,
        failure_threshold=failure_threshold,
        open_s=open_s,
        max_open_s=max_open_s,
        clock=clock,
    )


def advance(limiter: Limiter, clock: FakeClock, seconds: float) -> None:
    """Move the fake clock and wake the waiters, which otherwise re-check within 1 real s."""
    with limiter.cond:
        clock.now += seconds
        limiter.cond.notify_all()


def acquire_in_thread(limiter: Limiter, tokens: int = 1) -> threading.Event:
    done = threading.Event()

    def run() -> None:
        limiter.acquire(tokens)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def open_limiter_breaker(limiter: Limiter) -> None:
    for _ in range(limiter.breaker.failure_threshold):
        limiter.acquire(1)
        limiter.release(Outcome("failure"), 1)
    assert limiter.breaker_open()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def test_limiter_acquire_reserves_and_counts_inflight(clock: FakeClock) -> None:
    lim = make_limiter(clock, rpm=60, tpm=1000)
    lim.acquire(100)
    lim.acquire(50)
    assert lim.inflight == 2
    assert lim.requests == 2
    assert lim.rpm is not None and lim.rpm.tokens == 58
    assert lim.tpm is not None and lim.tpm.tokens == 850
    lim.release(Outcome("ok"), 100)
    assert lim.inflight == 1
    assert lim.requests == 2


def test_limiter_without_adaptive_uses_the_cap(clock: FakeClock) -> None:
    lim = make_limiter(clock, cap=3)
    assert lim.limit() == 3
    for _ in range(3):
        assert lim._wait_needed(1, clock()) == 0.0
        lim.acquire(1)
    assert lim._wait_needed(1, clock()) > 0


def test_limiter_acquire_blocks_at_the_limit_until_a_release(clock: FakeClock) -> None:
    lim = make_limiter(clock, cap=2)
    lim.acquire(1)
    lim.acquire(1)
    done = acquire_in_thread(lim)
    assert not done.wait(BLOCKED_S)
    lim.release(Outcome("ok"), 1)
    assert done.wait(PROCEED_S)
    assert lim.inflight == 2
    assert lim.requests == 3


def test_limiter_release_ok_feeds_breaker_and_adaptive(clock: FakeClock) -> None:
    lim = make_limiter(clock, adaptive=True, cap=50)
    assert lim.adaptive is not None
    assert lim.limit() == 2
    lim.acquire(1)
    lim.release(Outcome("failure"), 1)
    assert lim.breaker.failures == 1
    lim.acquire(1)
    lim.release(Outcome("ok", latency_s=0.5), 1)
    assert lim.breaker.failures == 0
    assert lim.limit() == 3  # slow start: +1 per success
    assert lim.adaptive.rtt == 0.5


def test_limiter_release_rate_limited_feeds_adaptive_with_inflight(clock: FakeClock) -> None:
    lim = make_limiter(clock, adaptive=True, cap=50)
    assert lim.adaptive is not None
    lim.adaptive.limit = 16
    for _ in range(10):
        lim.acquire(1)
    lim.release(Outcome("rate_limited"), 1)
    assert lim.rate_limited == 1
    assert lim.inflight == 9
    assert lim.adaptive.slow_start is False
    assert lim.limit() == 9  # 10 in flight when it was refused, the others accepted
    assert lim.breaker.failures == 0  # a 429 is not a failure
    assert lim.breaker.state is BreakerState.CLOSED


def test_limiter_slow_start_burst_settles_at_what_the_endpoint_accepts(clock: FakeClock) -> None:
    """Slow start sends 16 at once to an endpoint of 8: the 8 refused keep their slots
    through their wait, so each later refusal sees fewer accepted; the limit ends at 8."""
    lim = make_limiter(clock, adaptive=True, cap=50)
    assert lim.adaptive is not None
    lim.adaptive.limit = 16
    lim.adaptive.rtt = 0.5
    for _ in range(16):
        lim.acquire(1)
    for _ in range(8):
        lim.release(Outcome("rate_limited"), 1, keep_slot=True)
        clock.now += 0.001
    assert lim.limit() == 8
    assert lim.inflight == 16 and lim.held == 8
    for _ in range(8):
        lim.free_slot()
    assert lim.inflight == 8 and lim.held == 0
    assert lim.breaker.failures == 0  # a 429 is not a failure
    assert lim.breaker.state is BreakerState.CLOSED


def test_limiter_release_failure_opens_breaker(clock: FakeClock) -> None:
    lim = make_limiter(clock, failure_threshold=2)
    lim.acquire(1)
    lim.release(Outcome("failure"), 1)
    assert not lim.breaker_open()
    lim.acquire(1)
    lim.release(Outcome("failure"), 1)
    assert lim.breaker_open()
    assert lim.breaker.opened_count == 1
    assert lim.inflight == 0


def test_limiter_release_other_frees_the_probe_slot(clock: FakeClock) -> None:
    lim = make_limiter(clock)
    open_limiter_breaker(lim)
    clock.now += 10.0
    lim.acquire(1)  # the probe
    assert lim.breaker.state is BreakerState.HALF_OPEN
    assert lim._wait_needed(1, clock()) > 0  # the probe is out
    lim.release(Outcome("other"), 1)  # e.g. a 400: the endpoint answered
    assert lim.breaker.probing is False
    assert lim._wait_needed(1, clock()) == 0.0  # the next probe may go


def test_limiter_rpm_blocks_the_request_over_budget_wait_needed(clock: FakeClock) -> None:
    lim = make_limiter(clock, rpm=3, cap=10)
    for _ in range(3):
        lim.acquire(1)
        lim.release(Outcome("ok"), 1)
    assert lim._wait_needed(1, clock()) == pytest.approx(20.0)  # one request per 20 s
    assert lim._wait_needed(1, clock() + 19.9) > 0
    assert lim._wait_needed(1, clock() + 20.0) == 0.0


def test_limiter_rpm_blocks_the_request_over_budget_thread(clock: FakeClock) -> None:
    lim = make_limiter(clock, rpm=3, cap=10)
    for _ in range(3):
        lim.acquire(1)
        lim.release(Outcome("ok"), 1)
    done = acquire_in_thread(lim)
    assert not done.wait(BLOCKED_S)
    advance(lim, clock, 10.0)
    assert not done.wait(BLOCKED_S)
    advance(lim, clock, 10.0)
    assert done.wait(PROCEED_S)
    assert lim.requests == 4


def test_limiter_remaining_requests_zero_pauses_until_reset(clock: FakeClock) -> None:
    lim = make_limiter(clock)
    lim.acquire(1)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
    lim.release(Outcome("ok", headers=headers), 1)
    assert lim.paused_until == T0 + 2.0
    assert lim._wait_needed(1, T0) == pytest.approx(2.0)
    assert lim._wait_needed(1, T0 + 1.9) == pytest.approx(0.1)
    assert lim._wait_needed(1, T0 + 2.0) == 0.0


def test_limiter_pause_holds_acquire_on_the_fake_clock(clock: FakeClock) -> None:
    lim = make_limiter(clock)
    lim.acquire(1)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
    lim.release(Outcome("rate_limited", headers=headers), 1)
    done = acquire_in_thread(lim)
    assert not done.wait(BLOCKED_S)
    advance(lim, clock, 1.5)
    assert not done.wait(BLOCKED_S)
    advance(lim, clock, 0.5)
    assert done.wait(PROCEED_S)


def test_limiter_remaining_tokens_zero_pauses_too(clock: FakeClock) -> None:
    lim = make_limiter(clock)
    lim.acquire(1)
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "500ms"}
    lim.release(Outcome("ok", headers=headers), 1)
    assert lim._wait_needed(1, T0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "2s"},
        {"x-ratelimit-remaining-requests": "0"},
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"},
        {"x-ratelimit-remaining-requests": "n/a", "x-ratelimit-reset-requests": "2s"},
        {"x-ratelimit-reset-requests": "2s"},
    ],
)
def test_limiter_headers_that_do_not_pause(clock: FakeClock, headers: dict[str, str]) -> None:
    lim = make_limiter(clock)
    lim.acquire(1)
    lim.release(Outcome("ok", headers=headers), 1)
    assert lim._wait_needed(1, T0) == 0.0


def test_limiter_pause_is_at_most_a_minute_and_never_shortened(clock: FakeClock) -> None:
    lim = make_limiter(clock)
    lim.acquire(1)
    long = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1h"}
    lim.release(Outcome("ok", headers=long), 1)
    assert lim.paused_until == T0 + 60.0
    short = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}
    with lim.cond:
        lim._observe_headers(short, T0)
    assert lim.paused_until == T0 + 60.0


def test_limiter_tpm_gives_back_what_was_not_used(clock: FakeClock) -> None:
    lim = make_limiter(clock, tpm=1000)
    assert lim.tpm is not None
    lim.acquire(300)
    assert lim.tpm.tokens == 700
    lim.release(Outcome("ok", tokens_used=100), 300)
    assert lim.tpm.tokens == 900


def test_limiter_tpm_charges_usage_over_the_reservation(clock: FakeClock) -> None:
    lim = make_limiter(clock, tpm=1000)
    assert lim.tpm is not None
    lim.acquire(300)
    lim.release(Outcome("ok", tokens_used=500), 300)
    assert lim.tpm.tokens == 500


def test_limiter_tpm_no_give_back_without_usage_or_on_failure(clock: FakeClock) -> None:
    lim = make_limiter(clock, tpm=1000)
    assert lim.tpm is not None
    lim.acquire(300)
    lim.release(Outcome("ok"), 300)
    lim.acquire(200)
    lim.release(Outcome("failure", tokens_used=0), 200)
    assert lim.tpm.tokens == 500


def test_limiter_tpm_blocks_until_refilled(clock: FakeClock) -> None:
    lim = make_limiter(clock, tpm=600)  # 10 tokens/s
    lim.acquire(500)
    lim.release(Outcome("ok", tokens_used=500), 500)
    assert lim._wait_needed(200, T0) == pytest.approx(10.0)
    done = acquire_in_thread(lim, tokens=200)
    assert not done.wait(BLOCKED_S)
    advance(lim, clock, 10.0)
    assert done.wait(PROCEED_S)


def test_limiter_breaker_open_holds_acquire_until_the_open_time(clock: FakeClock) -> None:
    lim = make_limiter(clock, failure_threshold=2, open_s=10.0)
    open_limiter_breaker(lim)
    probe = acquire_in_thread(lim)
    assert not probe.wait(BLOCKED_S)
    advance(lim, clock, 9.0)
    assert not probe.wait(BLOCKED_S)
    advance(lim, clock, 1.0)
    assert probe.wait(PROCEED_S)
    assert lim.breaker.state is BreakerState.HALF_OPEN
    assert lim.inflight == 1

    # While the probe is out, the others are held; its success lets them go.
    other = acquire_in_thread(lim)
    assert not other.wait(BLOCKED_S)
    lim.release(Outcome("ok"), 1)
    assert other.wait(PROCEED_S)
    assert not lim.breaker_open()


def test_limiter_probe_failure_holds_requests_for_the_doubled_time(clock: FakeClock) -> None:
    lim = make_limiter(clock, failure_threshold=2, open_s=10.0)
    open_limiter_breaker(lim)
    clock.now += 10.0
    lim.acquire(1)  # the probe
    lim.release(Outcome("failure"), 1)
    assert lim.breaker.opened_count == 2
    assert lim._wait_needed(1, clock()) == pytest.approx(20.0)
    assert lim._wait_needed(1, clock() + 20.0) == 0.0


def test_limiter_probe_answered_429_does_not_hold_requests_forever(clock: FakeClock) -> None:
    """A probe that gets a 429 has been answered: the endpoint is up (if busy).

    Its slot must be freed (as for any other answer) or the breaker closed; otherwise the
    breaker stays half-open with a probe marked out that will never come back, and every
    `acquire` waits forever.
    """
    lim = make_limiter(clock)
    open_limiter_breaker(lim)
    clock.now += 10.0
    lim.acquire(1)  # the probe
    assert lim.breaker.state is BreakerState.HALF_OPEN
    lim.release(Outcome("rate_limited"), 1)
    assert lim.inflight == 0
    clock.now += 3600.0
    assert lim._wait_needed(1, clock()) == 0.0


def test_limiter_is_consistent_under_concurrent_threads(clock: FakeClock) -> None:
    lim = make_limiter(clock, cap=4, rpm=1000, tpm=100_000)
    peak = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal peak
        for _ in range(25):
            lim.acquire(10)
            with lock:
                peak = max(peak, lim.inflight)
            lim.release(Outcome("ok", tokens_used=10), 10)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5.0)
    assert not any(t.is_alive() for t in threads)
    assert lim.requests == 200
    assert lim.inflight == 0
    assert peak <= 4
    # Each request reserved 10 and used 10: nothing given back, and the fake clock never moved.
    assert lim.tpm is not None and math.isclose(lim.tpm.tokens, 100_000 - 200 * 10)
