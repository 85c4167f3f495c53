"""Work items with rich, varied context for prompt-budget tests and benchmarks, and a run
of them through an `LLMExecutor` (`budget_run`).

Each item carries a chat message and every context section the prompt builder knows:
a profile, a summary, memory (user and assistant turns, business events) and knowledge
chunks, in one "style" per conversation (English prose, German or French with accents,
Japanese, JSON-like or number-heavy text), so the tokens per character the endpoint counts
vary from request to request as they do in production. Seeded: the same seed gives the
same items.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from config.models import LLMConfig, TaskConfig
from core.records import WorkItem
from inference.budget import TokenCalibration
from inference.client import LLMExecutor
from state.stores import ResponseCache


def _vocab(words: str) -> list[str]:
    return words.split()


_EN = _vocab(
    "order delivery refund invoice account password reset shipping address payment card "
    "the a to of and my is was not please help thanks when where why how can you I we "
    "customer support ticket status update delayed package warehouse subscription plan "
    "upgrade cancel renewal billing charge twice wrong item size colour return label"
)
_DE = _vocab("Bestellung Rückerstattung Lieferung Größe Straße Kündigung bitte danke für über")
_FR = _vocab("commande remboursement livraison reçu délai adresse problème merci déjà été")
_JA = _vocab("注文 配送 返金 請求書 住所 支払い 確認 お願い します ありがとう 遅延 問題")
STYLES = ("en", "de", "fr", "ja", "json", "numbers")


def _words(rng: random.Random, vocab: list[str], chars: int, sep: str = " ") -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(vocab)
        if rng.random() < 0.08:
            w += rng.choice(".,?!")
        out.append(w)
        n += len(w) + len(sep)
    return sep.join(out)


def text(rng: random.Random, style: str, chars: int) -> str:
    """About `chars` characters of text in `style` (one of `STYLES`)."""
    if style == "en":
        return _words(rng, _EN, chars)
    if style == "de":
        return _words(rng, _DE + _EN[:20], chars)
    if style == "fr":
        return _words(rng, _FR + _EN[:20], chars)
    if style == "ja":
        return _words(rng, _JA, chars // 2, sep="")
    parts: list[str] = []
    size = 0  # sum of the parts' lengths, kept as they are added
    if style == "json":
        while size < chars:
            key = rng.choice(_EN)
            value = rng.choice((f'"{rng.choice(_EN)}"', str(rng.randint(0, 99999)), "null"))
            parts.append(f'"{key}":{value}')
            size += len(parts[-1])
        return "{" + ",".join(parts) + "}"
    while size < chars:
        parts.append(
            rng.choice(
                (
                    f"#{rng.randint(1000, 999999)}",
                    f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2025",
                    f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d} EUR",
                    rng.choice(_EN),
                )
            )
        )
        size += len(parts[-1])
    return " ".join(parts)


def rich_item(rng: random.Random, item_id: str, tenant: str = "acme") -> WorkItem:
    """One chat work item with a profile, summary, memory and knowledge of random sizes."""
    style = rng.choice(STYLES)
    memory: list[dict[str, Any]] = []
    for t in range(rng.randint(0, 12)):
        if rng.random() < 0.15:
            memory.append(
                {
                    "role": "event",
                    "event_type": rng.choice(("refund", "order", "login")),
                    "amount": round(rng.uniform(1, 500), 2),
                    "currency": "EUR",
                    "attributes": {"sku": f"A-{rng.randint(1, 999)}", "note": text(rng, style, 40)},
                    "ts": 1000.0 + t,
                }
            )
        else:
            role = "user" if t % 2 == 0 else "assistant"
            memory.append({"role": role, "text": text(rng, style, rng.randint(20, 500)), "ts": t})
    knowledge = [
        {
            "doc_id": f"kb-{rng.randint(1, 50)}",
            "version": rng.randint(1, 5),
            "chunk_id": f"c{c}",
            "score": round(rng.random(), 3),
            "title": text(rng, style, 30),
            "text": text(rng, style, rng.randint(200, 800)),
        }
        for c in range(rng.randint(0, 6))
    ]
    context: dict[str, Any] = {
        "profile": {
            "name": text(rng, style, 12),
            "tier": rng.choice(("free", "pro", "enterprise")),
            "country": rng.choice(("DE", "FR", "JP", "US")),
            "orders": rng.randint(0, 300),
            "notes": text(rng, style, rng.randint(0, 200)),
        },
        "memory": memory,
        "knowledge": knowledge,
    }
    if rng.random() < 0.7:
        context["summary"] = text(rng, style, rng.randint(50, 800))
    return WorkItem(
        item_id=item_id,
        event_ids=(item_id,),
        tenant=tenant,
        entity=f"s-{item_id}",
        profile_id=f"u-{item_id}",
        task="chat_reply",
        source=f"chat[0]@{item_id}",
        data={"text": text(rng, style, rng.randint(20, 300)), "role": "user"},
        context=context,
        ingest_ts=0.0,
    )


def rich_requests(seed: int, count: int, max_pack: int = 4) -> list[list[WorkItem]]:
    """`count` requests of 1 to `max_pack` rich items each (unique ids)."""
    rng = random.Random(seed)
    out: list[list[WorkItem]] = []
    for r in range(count):
        out.append([rich_item(rng, f"r{seed}-{r}-{k}") for k in range(rng.randint(1, max_pack))])
    return out


PII_KINDS = ("email", "phone", "credit_card", "iban", "ssn", "ip")
PII = {
    "email": "ann.lee@example.com",
    "phone": "+1 415-555-0132",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "ssn": "123-45-6789",
    "ip": "192.168.10.42",
}
"""One value of each PII kind `RegexRedactor` knows (valid checksums where there is one)."""

PII_IN_ITEM = 13
"""The number of PII values `pii_item` carries."""


def pii_item(item_id: str = "e1", tenant: str = "acme") -> WorkItem:
    """A work item with PII in every place a prompt reads: the item's text and payload
    fields, business attributes, profile attributes (one a card number stored as a number),
    memory turns (user, assistant and business events), the summary and knowledge chunks."""
    p = PII
    return WorkItem(
        item_id=item_id,
        event_ids=(item_id,),
        tenant=tenant,
        entity="sess-1",
        profile_id="u-1",
        task="chat_reply",
        source=f"chat[0]@{item_id}",
        data={
            "text": f"my mail is {p['email']}",
            "role": "user",
            "attributes": {"card": p["card"], "note": f"call {p['phone']}"},
        },
        context={
            "profile": {
                "name": "Ann",
                "email": p["email"],
                "ssn": p["ssn"],
                "card_no": 4111111111111111,
            },
            "memory": [
                {"role": "user", "text": f"from {p['ip']}", "ts": 1.0},
                {"role": "assistant", "text": f"we wrote to {p['email']}", "ts": 2.0},
                {
                    "role": "event",
                    "event_type": "refund",
                    "amount": 5.0,
                    "currency": "EUR",
                    "attributes": {"iban": p["iban"]},
                    "ts": 3.0,
                },
            ],
            "summary": f"Ann ({p['phone']}) asked about her IBAN {p['iban']}.",
            "knowledge": [
                {
                    "doc_id": "kb1",
                    "version": 2,
                    "chunk_id": "c1",
                    "score": 0.8,
                    "title": f"Contact {p['email']}",
                    "text": f"Escalate to {p['phone']}.",
                },
            ],
        },
        ingest_ts=0.0,
    )


def budget_run(
    base_url: str,
    calibration: TokenCalibration,
    cache_dir: Path,
    *,
    budget: int = 1500,
    requests: int = 700,
    warmup: int = 100,
    seed: int = 7,
    model: str = "sim-1",
) -> dict[str, Any]:
    """Send `rich_requests(seed, requests)` one after another through an executor with
    `calibration` and a `budget`-token prompt budget; figures over the requests after
    `warmup` (answered ones, in order; a split pack counts as its requests). The response
    cache lives in `cache_dir` (close it with `state.stores.close_all`).

    `over_share` is the share whose `usage.prompt_tokens` exceeded the budget,
    `trimmed_share` the share that had context dropped, `mean_use` the mean of
    prompt tokens / budget, `over_by_estimate` the requests whose items alone exceeded it.
    """
    task = TaskConfig(
        name="chat_reply", schema_name="chat_reply", model=model, prompt_budget_tokens=budget
    )
    cfg = LLMConfig(tasks=(task,), routes=(), concurrency=4)
    audits: list[dict[str, Any]] = []
    ex = LLMExecutor(cfg, base_url, ResponseCache(cache_dir), calibration=calibration)
    try:
        for items in rich_requests(seed, requests):
            out = ex.run(task, items)
            if out.failed:
                msg = f"budget_run: {len(out.failed)} item(s) failed: {out.failed[0].reason}"
                raise RuntimeError(msg)
            audits.extend(a for a in out.audits if a["outcome"] == "ok")
    finally:
        ex.close()
    after = audits[warmup:]
    n = max(1, len(after))
    over = sum(a["prompt_tokens"] > budget for a in after)
    return {
        "requests": len(audits),
        "measured": len(after),
        "over": over,
        "over_share": over / n,
        "warmup_over": sum(a["prompt_tokens"] > budget for a in audits[:warmup]),
        "trimmed_share": sum(bool(a["context_dropped"]) for a in after) / n,
        "mean_use": sum(a["prompt_tokens"] for a in after) / n / budget,
        "over_by_estimate": sum(a["over_budget"] for a in audits),
        "estimate_within_budget": all(a["prompt_tokens_estimate"] <= budget for a in after),
        "factor": calibration.factor(model),
    }
