"""Client-side limits for LLM requests: token buckets, adaptive concurrency, circuit breaker.

The pure parts (`TokenBucket`, `AdaptiveConcurrency`, `CircuitBreaker`) take the time as an
argument, so they are tested without sleeping. `Limiter` combines them for the request threads
of one process: `acquire` blocks until a request may be sent, `release` reports its outcome.

- Requests-per-minute and tokens-per-minute budgets are token buckets (capacity one minute's
  budget, refilled continuously). Responses' `x-ratelimit-remaining-*` headers of zero pause
  new requests until the matching `x-ratelimit-reset-*` time.
- Adaptive concurrency starts low and doubles per round trip (slow start) until the first
  429; after that it grows by one request per `increase_every` x limit successes and shrinks
  by `decrease_factor` on a 429, at most once per round trip. It settles just above what the
  endpoint accepts: a 429 now and then, the endpoint kept busy. A cycle between two 429s
  carries about (1 - decrease_factor) x increase_every x C^2 requests, so with the defaults
  under 5 % of requests get a 429 even for a server limit C of 4.
- A server that queues instead of refusing (llama-server, vLLM) never answers 429: its
  latency grows instead. So the limit also follows the latency gradient, the idea of Netflix's
  concurrency-limits library: `gradient = tolerance x rtt_noload / rtt`, clamped to
  [0.5, 1], where `rtt_noload` is the fastest round trip seen (the no-load baseline, at least
  `NOLOAD_FLOOR_S`) and `rtt` the smoothed latency. When `limit x gradient + queue` is below
  the limit, the limit moves a `smoothing` share of the way to it (and slow start ends). A
  server of C slots and service time S answers in about S x L / C at a limit L > C, so the
  limit settles near `tolerance x C + queue`: the slots kept busy, a short queue, no flood.
- The circuit breaker opens after `failure_threshold` consecutive failures (5xx, timeouts,
  connection errors; not 429s), lets one probe through after `open_s` (doubling up to
  `max_open_s` while probes fail), and closes on the first success. While it is open,
  requests wait in `acquire` instead of failing: they are held, and sent when it closes.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]


class TokenBucket:
    """A bucket of `capacity` tokens refilled at `rate` tokens per second."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens are available (0 if they are now)."""
        self._refill(now)
        need = min(amount, self.capacity) - self.tokens
        return 0.0 if need <= 0 else need / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount

    def give_back(self, amount: float) -> None:
        self.tokens = min(self.capacity, self.tokens + amount)


NOLOAD_FLOOR_S = 0.05
"""Latency growth below this is never read as queueing: a round trip of a few milliseconds
varies with the client's own load (threads, GIL) more than with the server's queue."""


class AdaptiveConcurrency:
    """AIMD concurrency limit with slow start, driven by successes and 429s, and shrunk when
    latency grows against the no-load baseline (the module docstring has both rules).

    `tolerance` None turns the latency gradient off (AIMD on 429s alone).
    """

    def __init__(
        self,
        cap: int,
        initial: int = 2,
        decrease_factor: float = 0.9,
        increase_every: float = 16.0,
        *,
        tolerance: float | None = 1.5,
        queue: float = 2.0,
        smoothing: float = 0.2,
    ) -> None:
        self.cap = cap
        self.limit = float(min(initial, cap))
        self.decrease_factor = decrease_factor
        self.increase_every = increase_every
        self.tolerance = tolerance
        self.queue = queue
        self.smoothing = smoothing
        self.slow_start = True
        self.settle_until = -math.inf  # the round trip after slow start ended
        self.last_decrease = -math.inf
        self.rtt = 0.0  # EWMA of request latency, the cooldown between decreases
        self.rtt_noload = math.inf  # the fastest round trip seen
        self.gradient_decreases = 0

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    def gradient(self) -> float:
        """`tolerance x rtt_noload / rtt`, clamped to [0.5, 1] (1 before any sample)."""
        if self.tolerance is None or self.rtt <= 0 or math.isinf(self.rtt_noload):
            return 1.0
        noload = max(self.rtt_noload, NOLOAD_FLOOR_S)
        return max(0.5, min(1.0, self.tolerance * noload / self.rtt))

    def on_success(self, latency_s: float) -> None:
        self.rtt = latency_s if self.rtt == 0 else 0.8 * self.rtt + 0.2 * latency_s
        self.rtt_noload = min(self.rtt_noload, latency_s)
        target = self.limit * self.gradient() + self.queue
        if target < self.limit:
            # Latency grew beyond the tolerance: the server queues. Shrink, smoothed.
            self.slow_start = False
            self.gradient_decreases += 1
            self.limit = max(1.0, (1 - self.smoothing) * self.limit + self.smoothing * target)
        elif self.slow_start:
            self.limit = min(self.cap, self.limit + 1)  # +1 per success: doubles per round trip
        else:
            self.limit = min(self.cap, self.limit + 1 / (self.increase_every * self.limit))

    def on_rate_limited(self, now: float, accepted: int) -> None:
        """A 429 while `accepted` other requests were in flight and not themselves refused.

        Slow start ends at the first 429; for one round trip after it, every 429 caps the
        limit at what the endpoint was seen to accept. Slow start sends its doubled window as
        a burst, so the first 429 arrives while the rest of the overshoot is still on its
        way: only the later 429s of the burst show how far over the limit it went (an
        endpoint of 8 answering a burst of 16 refuses 8). After that round trip, a burst of
        429s is one signal: one decrease by `decrease_factor` per round trip.
        """
        if self.slow_start or now < self.settle_until:
            if self.slow_start:
                self.slow_start = False
                self.settle_until = now + max(self.rtt, 0.05)
            self.last_decrease = now
            self.limit = max(1.0, min(self.limit, float(accepted)))
            return
        if now - self.last_decrease < max(self.rtt, 0.05):
            return
        self.last_decrease = now
        self.limit = max(1.0, self.limit * self.decrease_factor)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a half-open probe."""

    def __init__(self, failure_threshold: int, open_s: float, max_open_s: float) -> None:
        self.failure_threshold = failure_threshold
        self.base_open_s = open_s
        self.max_open_s = max_open_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_s = open_s
        self.until = 0.0
        self.probing = False
        self.opened_count = 0

    def may_send(self, now: float) -> bool:
        """True if a request may go now (in half-open, only the one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now >= self.until:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def admits(self, now: float) -> bool:
        """What `may_send` would answer now, without taking the probe (read-only)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now >= self.until
        return not self.probing

    def wait_time(self, now: float) -> float:
        if self.state is BreakerState.OPEN:
            return max(0.0, self.until - now)
        return 0.05  # half-open with the probe out: check again soon

    def on_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.probing = False
        self.open_s = self.base_open_s

    def on_failure(self, now: float) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.probing = False
            self.open_s = min(self.max_open_s, self.open_s * 2)
            self._open(now)
            return
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.until = now + self.open_s
        self.opened_count += 1


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """Seconds from an `x-ratelimit-reset-*` value such as `1s`, `6m0s`, `20ms` or `0.5`."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


@dataclass(frozen=True)
class Outcome:
    """What happened to one attempt, as `Limiter.release` needs it."""

    kind: str  # "ok", "rate_limited", "failure" (5xx/timeout/connection), "other"
    latency_s: float = 0.0
    tokens_used: int | None = None
    headers: Mapping[str, str] | None = None


class Limiter:
    """Gate for the request threads of a process (thread-safe)."""

    def __init__(
        self,
        *,
        cap: int,
        rpm: int | None,
        tpm: int | None,
        adaptive: bool,
        failure_threshold: int,
        open_s: float,
        max_open_s: float,
        latency_tolerance: float | None = 1.5,
        latency_queue: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        """`latency_tolerance`/`latency_queue`: the adaptive limit's latency gradient
        (`AdaptiveConcurrency` `tolerance`/`queue`; tolerance None: AIMD on 429s only)."""
        now = clock()
        self.clock = clock
        self.cap = cap
        self.rpm = TokenBucket(rpm, rpm / 60, now) if rpm else None
        self.tpm = TokenBucket(tpm, tpm / 60, now) if tpm else None
        self.adaptive = (
            AdaptiveConcurrency(cap, tolerance=latency_tolerance, queue=latency_queue)
            if adaptive
            else None
        )
        self.breaker = CircuitBreaker(failure_threshold, open_s, max_open_s)
        self.inflight = 0
        self.held = 0  # slots kept by refused requests through their retry wait
        self.paused_until = 0.0
        self.cond = threading.Condition()
        self.rate_limited = 0
        self.requests = 0
        self.next_ticket = 0
        self.serving = 0

    def limit(self) -> int:
        return self.adaptive.current if self.adaptive else self.cap

    def breaker_open(self) -> bool:
        with self.cond:
            return self.breaker.state is not BreakerState.CLOSED

    def admits(self) -> bool:
        """True if the breaker would let a request (or the probe) go now; changes nothing."""
        with self.cond:
            return self.breaker.admits(self.clock())

    def _wait_needed(self, tokens: int, now: float) -> float:
        """Seconds to wait before a request may go; 0 means go (and reserve)."""
        if now < self.paused_until:
            return self.paused_until - now
        if self.inflight >= self.limit():
            return 1.0  # woken by release()
        if self.rpm and (w := self.rpm.wait_time(1, now)) > 0:
            return w
        if self.tpm and (w := self.tpm.wait_time(tokens, now)) > 0:
            return w
        if not self.breaker.may_send(now):
            return self.breaker.wait_time(now)
        return 0.0

    def acquire(self, tokens: int) -> None:
        """Block until a request estimated at `tokens` tokens may be sent, and reserve it.

        Waiting threads are served first come, first served (a ticket each), so under a
        tight limit no request starves behind later ones.
        """
        with self.cond:
            ticket = self.next_ticket
            self.next_ticket += 1
            while True:
                now = self.clock()
                if ticket == self.serving:
                    wait = self._wait_needed(tokens, now)
                    if wait <= 0:
                        break
                else:
                    wait = 1.0  # not our turn: woken when the queue moves
                self.cond.wait(timeout=min(wait, 1.0))
            self.serving += 1
            self.cond.notify_all()
            self.inflight += 1
            self.requests += 1
            if self.rpm:
                self.rpm.take(1, now)
            if self.tpm:
                self.tpm.take(tokens, now)

    def release(self, outcome: Outcome, reserved_tokens: int, *, keep_slot: bool = False) -> None:
        """Report an attempt's outcome and free its slot (unless `keep_slot`: then the caller
        holds it through a retry wait and calls `free_slot` after)."""
        with self.cond:
            now = self.clock()
            # The others in flight that the endpoint had not refused when it answered this.
            accepted = self.inflight - self.held - 1
            if keep_slot:
                self.held += 1
            else:
                self.inflight -= 1
            if outcome.kind == "ok":
                self.breaker.on_success()
                if self.adaptive:
                    self.adaptive.on_success(outcome.latency_s)
                if self.tpm and outcome.tokens_used is not None:
                    self.tpm.give_back(reserved_tokens - outcome.tokens_used)
            elif outcome.kind == "rate_limited":
                self.rate_limited += 1
                # A 429 proves the endpoint is up: it closes the breaker (and frees a probe).
                self.breaker.on_success()
                if self.adaptive:
                    self.adaptive.on_rate_limited(now, accepted)
            elif outcome.kind == "failure":
                self.breaker.on_failure(now)
            else:
                # Answered (e.g. 4xx): the endpoint is up.
                self.breaker.on_success()
            if outcome.headers:
                self._observe_headers(outcome.headers, now)
            self.cond.notify_all()

    def free_slot(self) -> None:
        """Free the slot a refused request kept through its wait (`release(keep_slot=True)`)."""
        with self.cond:
            self.held -= 1
            self.inflight -= 1
            self.cond.notify_all()

    def _observe_headers(self, headers: Mapping[str, str], now: float) -> None:
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is None:
                continue
            try:
                left = float(remaining)
            except ValueError:
                continue
            if left <= 0:
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.paused_until = max(self.paused_until, now + min(reset, 60.0))
