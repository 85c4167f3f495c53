"""Several OpenAI-compatible endpoints behind one executor: choice, failover and fallback.

`EndpointPool` holds one client and one `Limiter` (its own concurrency limit, token buckets
and circuit breaker) per endpoint of `LLMConfig.endpoint_list`. Each attempt asks it for an
endpoint (`acquire`) and gives it back after (`release`):

- Candidates are the endpoints serving the request's model whose breaker is closed and that
  have a free slot (fewer outstanding requests than their limit). An endpoint whose breaker
  is open but due for its probe is a candidate while nothing else is outstanding there, so a
  recovered endpoint is found (and its traffic returns) even while the others carry the load.
- Of the candidates, the one with the fewest outstanding requests wins; ties go to the
  first in configured order. A retry after a failure avoids the endpoint that failed when
  another candidate exists, so a request in flight on a dying endpoint moves at once.
- A task with a `fallback` uses the fallback model (on its endpoint, if named) when no
  endpoint serving the primary model has had a closed breaker for `fallback.after_s`; as
  soon as one is closed again (its probe succeeded) requests go back to the primary.
- With no candidate, `acquire` waits (polling every `poll_s`, woken by every release):
  the request is held, as a single endpoint's open breaker holds it. Waiters are served
  oldest request first (`priority`: when the request began, kept across its attempts), so a
  request moved off a dead endpoint goes before the new ones that keep arriving.

Time comes from the injected `clock` (monotonic seconds), so the choice is tested without
sleeping and without a server (`connect` builds the clients; tests pass a dummy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import openai

from config.models import EndpointConfig, TaskConfig
from inference.limits import Clock, Limiter


@dataclass(eq=False)
class Endpoint:
    """One endpoint: its config, client, limiter and the pool's counts for it."""

    cfg: EndpointConfig
    client: openai.OpenAI
    limiter: Limiter
    outstanding: int = 0
    """Requests that hold or wait for a slot here (between `acquire` and `release`)."""
    down_since: float | None = None
    """When its breaker last left the closed state (None: closed)."""
    served: int = 0
    """Attempts sent here (for figures and tests)."""

    @property
    def name(self) -> str:
        return self.cfg.name


@dataclass(frozen=True)
class Pick:
    """The endpoint and model one attempt goes to; `fallback` if it is the task's fallback."""

    endpoint: Endpoint
    model: str
    fallback: bool


class EndpointPool:
    """Thread-safe choice among endpoints (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        *,
        adaptive: bool,
        connect: Callable[[EndpointConfig], openai.OpenAI],
        clock: Clock = time.monotonic,
        poll_s: float = 0.05,
        latency_tolerance: float | None = 1.5,
        latency_queue: float = 2.0,
    ) -> None:
        """`latency_tolerance`/`latency_queue`: each endpoint's adaptive limit's latency
        gradient (`Limiter`); None turns it off (429s only)."""
        self.clock = clock
        self.poll_s = poll_s
        self.cond = threading.Condition()
        self.waiting: dict[int, tuple[tuple[float, int], TaskConfig]] = {}
        self.tickets = 0
        self.endpoints = [
            Endpoint(
                e,
                connect(e),
                Limiter(
                    cap=e.concurrency or 1,
                    rpm=e.rpm_limit,
                    tpm=e.tpm_limit,
                    adaptive=adaptive,
                    failure_threshold=e.breaker_failures or 1,
                    open_s=e.breaker_open_s or 1.0,
                    max_open_s=e.breaker_max_open_s or 1.0,
                    clock=clock,
                    latency_tolerance=latency_tolerance,
                    latency_queue=latency_queue,
                ),
            )
            for e in endpoints
        ]

    @property
    def capacity(self) -> int:
        """Requests all endpoints together may have in flight (their concurrency caps)."""
        return sum(e.limiter.cap for e in self.endpoints)

    def by_name(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)

    def _candidate(self, ep: Endpoint, model: str) -> bool:
        if not ep.cfg.serves(model):
            return False
        if ep.limiter.breaker_open():
            return ep.outstanding == 0 and ep.limiter.admits()  # the probe
        return ep.outstanding < ep.limiter.limit()

    def _serving(self, model: str, endpoint: str | None = None) -> list[Endpoint]:
        return [e for e in self.endpoints if e.cfg.serves(model) and endpoint in (None, e.name)]

    def down_for(self, model: str) -> float:
        """Seconds since the last endpoint serving `model` left the closed state (0: one is
        closed now)."""
        with self.cond:
            return self._down_for(model, self.clock())

    def _down_for(self, model: str, now: float) -> float:
        since = [e.down_since for e in self._serving(model)]
        if not since or any(s is None for s in since):
            return 0.0
        return now - max(s for s in since if s is not None)

    def can_serve(self, task: TaskConfig) -> bool:
        """True while an endpoint serving the task's model, or its fallback, is closed."""
        with self.cond:
            up = [e for e in self._serving(task.model) if not e.limiter.breaker_open()]
            if not up and task.fallback is not None:
                fb = task.fallback
                up = [
                    e for e in self._serving(fb.model, fb.endpoint) if not e.limiter.breaker_open()
                ]
            return bool(up)

    def choose(self, task: TaskConfig, avoid: Endpoint | None = None) -> Pick | None:
        """Take a slot on the best candidate now (see the module docstring), or None."""
        with self.cond:
            return self._choose(task, avoid)

    def _options(self, task: TaskConfig) -> list[Pick]:
        options = [
            Pick(e, task.model, False) for e in self.endpoints if self._candidate(e, task.model)
        ]
        fb = task.fallback
        if (
            not options
            and fb is not None
            and self._down_for(task.model, self.clock()) >= fb.after_s
        ):
            options = [
                Pick(e, fb.model, True)
                for e in self._serving(fb.model, fb.endpoint)
                if self._candidate(e, fb.model)
            ]
        return options

    def _choose(self, task: TaskConfig, avoid: Endpoint | None) -> Pick | None:
        options = self._options(task)
        if avoid is not None and len(options) > 1:
            options = [p for p in options if p.endpoint is not avoid]
        if not options:
            return None
        pick = min(options, key=lambda p: p.endpoint.outstanding)  # ties: configured order
        pick.endpoint.outstanding += 1
        pick.endpoint.served += 1
        return pick

    def elsewhere(self, task: TaskConfig, failed: Endpoint) -> bool:
        """True if an endpoint other than `failed` could take an attempt of `task` now."""
        with self.cond:
            return any(p.endpoint is not failed for p in self._options(task))

    def acquire(
        self, task: TaskConfig, avoid: Endpoint | None = None, priority: float = 0.0
    ) -> Pick:
        """Wait until an endpoint can take an attempt of `task`, and take a slot there.

        While others wait too, the one with the lowest `priority` (then the first to wait)
        that some endpoint can take goes first.
        """
        with self.cond:
            self.tickets += 1
            me = self.tickets
            key = (priority, me)
            self.waiting[me] = (key, task)
            try:
                while True:
                    if not any(k < key and self._options(t) for k, t in self.waiting.values()) and (
                        pick := self._choose(task, avoid)
                    ):
                        return pick
                    self.cond.wait(timeout=self.poll_s)
            finally:
                del self.waiting[me]
                self.cond.notify_all()

    def observe(self, ep: Endpoint) -> None:
        """Record `ep`'s breaker state after an outcome was reported to its limiter."""
        with self.cond:
            if not ep.limiter.breaker_open():
                ep.down_since = None
            elif ep.down_since is None:
                ep.down_since = self.clock()
            self.cond.notify_all()

    def release(self, ep: Endpoint) -> None:
        """Give back the slot `acquire` took on `ep`."""
        with self.cond:
            ep.outstanding -= 1
            self.cond.notify_all()

    def close(self) -> None:
        for e in self.endpoints:
            e.client.close()
