"""Run the LLM simulator as a process: ``python -m llmsim [options]``.

Prints exactly one line, ``LLMSIM_READY http://HOST:PORT/v1`` (flushed), once it accepts
connections, then serves until SIGTERM or SIGINT and exits with status 0. Use
``--port 0`` to let the OS pick a free port and read it from the ready line. The
simulator can be reconfigured at runtime through ``POST /_sim/config``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from llmsim.server import LLMSimulator, SimConfig


def _parser() -> argparse.ArgumentParser:
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="python -m llmsim", description="OpenAI-compatible LLM simulator (loopback HTTP)."
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port, 0 = pick a free one")
    p.add_argument(
        "--latency-ms", type=float, default=d.latency_ms, help="fixed part of the service time"
    )
    p.add_argument(
        "--ms-per-prompt-token",
        type=float,
        default=d.ms_per_prompt_token,
        help="prefill cost: service time per prompt token",
    )
    p.add_argument(
        "--ms-per-completion-token",
        "--latency-per-token-ms",
        dest="ms_per_completion_token",
        type=float,
        default=d.ms_per_completion_token,
        help="decode cost: service time per completion token",
    )
    p.add_argument("--jitter-ms", type=float, default=d.jitter_ms, help="uniform random extra")
    p.add_argument(
        "--max-concurrency", type=int, default=d.max_concurrency, help="in-flight cap (429)"
    )
    p.add_argument("--rpm-limit", type=int, default=None, help="requests per minute (429)")
    p.add_argument(
        "--queue-slots", type=int, default=None, help="served at once; the rest queue (no 429)"
    )
    p.add_argument(
        "--max-context-tokens", type=int, default=None, help="longer prompts get 400 (llama's)"
    )
    p.add_argument("--error-rate", type=float, default=d.error_rate, help="P(HTTP 500)")
    p.add_argument("--timeout-rate", type=float, default=d.timeout_rate, help="P(hang)")
    p.add_argument("--hang-s", type=float, default=d.hang_s, help="duration of a hang")
    p.add_argument("--malformed-rate", type=float, default=d.malformed_rate, help="P(invalid JSON)")
    p.add_argument(
        "--drop-item-rate",
        type=float,
        default=d.drop_item_rate,
        help="P(each required top-level property is omitted)",
    )
    p.add_argument("--fail-next", type=int, default=d.fail_next, help="next N requests get 500")
    p.add_argument("--down", action="store_true", help="start in outage mode (503)")
    p.add_argument("--seed", type=int, default=d.seed, help="fault-injection RNG seed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, serve until SIGTERM/SIGINT, return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SimConfig(
            latency_ms=args.latency_ms,
            ms_per_prompt_token=args.ms_per_prompt_token,
            ms_per_completion_token=args.ms_per_completion_token,
            jitter_ms=args.jitter_ms,
            max_concurrency=args.max_concurrency,
            rpm_limit=args.rpm_limit,
            queue_slots=args.queue_slots,
            max_context_tokens=args.max_context_tokens,
            error_rate=args.error_rate,
            timeout_rate=args.timeout_rate,
            hang_s=args.hang_s,
            malformed_rate=args.malformed_rate,
            drop_item_rate=args.drop_item_rate,
            fail_next=args.fail_next,
            down=args.down,
            seed=args.seed,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with LLMSimulator(config, host=args.host, port=args.port) as sim:
        print(f"LLMSIM_READY {sim.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
