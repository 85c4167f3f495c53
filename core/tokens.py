"""The offline token estimate every layer shares (prompt budgets, chunking, batching)."""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """Offline token estimate (about 4 characters per token for English and JSON).

    >>> estimate_tokens("How do I reset my password?")
    7
    """
    return len(text) // 4 + 1
