"""Graceful stop: SIGTERM and SIGINT end every input at its current offset.

The dataflow then finishes like a finite input: the LLM stage waits for its requests in
flight, the sinks flush, the final snapshot is written and the process exits 0, so a restart
repeats nothing. If that takes longer than the deadline (an LLM outage, a stalled broker), or
a second signal arrives, the process exits at once with 128 + the signal number (143 for
SIGTERM, 130 for SIGINT) without a final snapshot: a restart then replays from the last
snapshot (at-least-once; answers already cached are not requested again).

Sources poll `stop_requested()`; `runtime.process.setup_process` installs the handlers.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("contextstream.signals")

_STOP = threading.Event()
"""Set by `request_stop` (a signal): every input partition ends at its current offset."""

GRACEFUL_STOP_DEADLINE_S = 8.0
"""How long a graceful stop may take before the process exits without a final snapshot."""


def request_stop() -> None:
    """End every input at its current offset (the flow then finishes and snapshots)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


_BEFORE_FORCED_EXIT: list[Callable[[int], None]] = []


def before_forced_exit(hook: Callable[[int], None]) -> None:
    """Call `hook(exit_code)` before a forced exit (`os._exit` skips the exit handlers)."""
    _BEFORE_FORCED_EXIT.append(hook)


def _exit_now(signum: int, why: str) -> None:
    log.error("%s; exiting with code %d without a final snapshot", why, 128 + signum)
    for hook in _BEFORE_FORCED_EXIT:
        try:
            hook(128 + signum)
        except Exception:
            log.exception("exit hook failed")
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def _watchdog(signum: int, deadline_s: float) -> None:
    time.sleep(deadline_s)
    why = (
        f"graceful stop did not finish within {deadline_s:g} s (requests in flight to a slow "
        "or unavailable LLM endpoint, or a stalled broker); the restart replays from the last "
        "snapshot"
    )
    _exit_now(signum, why)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _STOP.is_set():
        _exit_now(signum, f"second {name} during a graceful stop")
    _STOP.set()
    log.warning(
        "%s received: ending input, finishing work in flight and writing a final snapshot "
        "(at most %g s; send it again to exit at once)",
        name,
        _deadline_s,
    )
    threading.Thread(
        target=_watchdog, args=(signum, _deadline_s), name="graceful-stop", daemon=True
    ).start()


_deadline_s = GRACEFUL_STOP_DEADLINE_S


def install_graceful_stop(deadline_s: float = GRACEFUL_STOP_DEADLINE_S) -> None:
    """Make SIGTERM and SIGINT stop the flow gracefully (see the module docstring).

    Call from the main thread before the dataflow runs (`runtime.process.setup_process`
    does). Exit codes: 0 when the graceful stop finished (final snapshot written), 143 / 130
    when it ran past `deadline_s` or a second signal arrived.
    """
    global _deadline_s
    _deadline_s = deadline_s
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
