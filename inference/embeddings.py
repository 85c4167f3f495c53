"""Embeddings for the knowledge index: an OpenAI-compatible `/v1/embeddings` endpoint through
the official `openai` client, with our own timeout and retries.

`EmbeddingsClient.embed(texts)` sends the texts in batches of `batch_size`; each batch is
retried on 429, 5xx, timeouts and connection errors with exponential backoff and full jitter
(honouring `retry-after`), up to `max_attempts` attempts (the client's own retries are off, as
for chat in `inference.client`). When a batch still fails, or the endpoint answers something
else than one vector per text (a 4xx, a wrong count), it raises
`state.knowledge.EmbeddingsUnavailable`, which the index handles: documents stay searchable
lexically and are embedded later, a search without its query's vector is lexical only.

The API key comes from the environment variable `api_key_env` names; it is never logged and
not in the `repr`. Nothing is opened until the first request.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

import openai
from openai.types import CreateEmbeddingResponse

from config.models import EmbeddingsConfig
from state.knowledge import EmbeddingsUnavailable

log = logging.getLogger("contextstream.embeddings")

Sleep = Callable[[float], None]


class EmbeddingsClient:
    """Batched embeddings with retries; thread-safe (the follower and the workers share it).

    `key` (the model, and `@dimensions` when configured) is what the index keys vectors and
    its embedding cache by: vectors of another key are never mixed in.
    """

    def __init__(
        self, cfg: EmbeddingsConfig, *, sleep: Sleep = time.sleep, rng: random.Random | None = None
    ) -> None:
        self.cfg = cfg
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self.client = openai.OpenAI(
            base_url=cfg.base_url,
            api_key=cfg.api_key().get_secret_value() or "not-needed",
            max_retries=0,
            timeout=cfg.timeout_s,
        )

    def __repr__(self) -> str:
        return f"EmbeddingsClient(base_url={self.cfg.base_url!r}, key={self.key!r})"

    @property
    def key(self) -> str:
        cfg = self.cfg
        return cfg.model if cfg.dimensions is None else f"{cfg.model}@{cfg.dimensions}"

    def close(self) -> None:
        self.client.close()

    def embed(self, texts: Sequence[str], *, attempts: int | None = None) -> list[list[float]]:
        """One vector per text, in order; `attempts` per batch (None: `max_attempts`).

        Raises `EmbeddingsUnavailable` naming the last failure.
        """
        out: list[list[float]] = []
        size = self.cfg.batch_size
        for start in range(0, len(texts), size):
            out.extend(self._batch(list(texts[start : start + size]), attempts))
        return out

    def _batch(self, texts: list[str], attempts: int | None) -> list[list[float]]:
        budget = attempts or self.cfg.max_attempts
        last = ""
        for attempt in range(1, budget + 1):
            retry_after: float | None = None
            try:
                resp = self._create(texts)
            except openai.RateLimitError as exc:
                last, retry_after = f"429 rate limited: {exc.message}", _retry_after(exc)
            except openai.InternalServerError as exc:
                last = f"{exc.status_code} server error: {exc.message}"
            except openai.APITimeoutError:
                last = f"timed out after {self.cfg.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                last = f"connection error: {exc}"
            except openai.APIStatusError as exc:
                msg = f"embeddings endpoint refused the request ({exc.status_code}): {exc.message}"
                raise EmbeddingsUnavailable(msg) from None
            else:
                data = sorted(resp.data, key=lambda d: d.index)
                if len(data) != len(texts):
                    msg = f"embeddings endpoint returned {len(data)} vectors for {len(texts)} texts"
                    raise EmbeddingsUnavailable(msg)
                return [list(d.embedding) for d in data]
            if attempt < budget:
                delay = self._backoff(attempt, retry_after)
                log.warning(
                    "embeddings attempt %d failed (%s); retrying in %.2f s", attempt, last, delay
                )
                self.sleep(delay)
        msg = f"embeddings request failed after {budget} attempt(s): {last}"
        raise EmbeddingsUnavailable(msg)

    def _create(self, texts: list[str]) -> CreateEmbeddingResponse:
        cfg = self.cfg
        if cfg.dimensions is None:
            return self.client.embeddings.create(
                model=cfg.model, input=texts, timeout=cfg.timeout_s
            )
        return self.client.embeddings.create(
            model=cfg.model, input=texts, dimensions=cfg.dimensions, timeout=cfg.timeout_s
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
        with self._rng_lock:
            delay = self.rng.uniform(0, cap)  # full jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cfg.backoff_max_s))
        return delay


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return None if value is None else max(0.0, float(value))
    except (AttributeError, ValueError):
        return None


_clients: dict[EmbeddingsConfig, EmbeddingsClient] = {}
_clients_lock = threading.Lock()


def shared_embeddings(cfg: EmbeddingsConfig) -> EmbeddingsClient:
    """The process-wide client for `cfg` (one connection pool for the follower and workers)."""
    with _clients_lock:
        client = _clients.get(cfg)
        if client is None:
            client = _clients[cfg] = EmbeddingsClient(cfg)
        return client
