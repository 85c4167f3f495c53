"""Decode rate of the compiled adapters against the frozen decoder they replace.

    python -m bench.decode [--records 200000] [--rounds 3]

In one process, the same records (`support.workload.mixed`: 60 % metrics, 25 % business,
10 % chat, 5 % malformed, on an `auto` source) go through `operators.validate.Decoder`, whose
built-in shapes are presets compiled by `operators.validate.adapters`, and through
`support.legacy_decode.LegacyDecoder`, the decoder before adapters were declared in config.
Each rate is the best of `--rounds` rounds; `ratio` is presets / legacy (1.0: as fast).
Then a declared adapter with nested paths (`shop_orders`, the README's example: nested ids,
ISO timestamp, tenant field, three payload paths) decodes as many order records.

The last line is one JSON object: `records`, `oks`, `dead_letters`, `identical` (every
output of the two decoders equal), `legacy_per_s`, `presets_per_s`, `ratio`,
`custom_records`, `custom_oks`, `custom_per_s`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from config.models import AdapterSpec, SourceConfig, ValidationConfig
from core.records import DeadLetter, Event, RawRecord
from operators.validate import Decoder
from support import workload
from support.legacy_decode import LegacyDecoder

SHOP = AdapterSpec.model_validate(
    {
        "name": "shop_orders",
        "kind": "business",
        "event_id": "order.id",
        "entity": "customer.id",
        "timestamp": {"field": "created_at", "format": "iso8601"},
        "tenant": {"field": "shop.tenant"},
        "payload": {
            "amount": "order.total",
            "type": "order.kind",
            "attributes.region": "shop.region",
        },
    }
)


def orders(n: int, now: float) -> list[RawRecord]:
    out = []
    for i in range(n):
        doc = {
            "order": {"id": f"o-{i:07d}", "total": round(10 + i % 500 * 1.5, 2), "kind": "sale"},
            "customer": {"id": f"c-{i % 1000:04d}", "segment": "retail"},
            "created_at": datetime.fromtimestamp(now - n + i, UTC).isoformat(),
            "shop": {"tenant": "acme", "region": "eu-west"},
        }
        out.append(RawRecord("shop.orders", 0, i, None, json.dumps(doc).encode(), "orders"))
    return out


def best_rate(
    decode: Callable[[RawRecord], object], raws: Sequence[RawRecord], rounds: int
) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for raw in raws:
            decode(raw)
        best = min(best, time.perf_counter() - t0)
    return len(raws) / best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    now = time.time()
    cfg = ValidationConfig()
    sources = {
        "auto": SourceConfig(name="auto", path="in.jsonl", tenant="acme"),
        "orders": SourceConfig(name="orders", topic="shop.orders", adapter="shop_orders"),
    }
    raws = [
        RawRecord("file:in.jsonl", 0, i, None, value, "auto")
        for i, (_, value) in enumerate(workload.mixed(args.records))
    ]
    new = Decoder("decode", sources, cfg, lambda: now, (SHOP,))
    old = LegacyDecoder("decode", {"auto": sources["auto"]}, cfg, lambda: now)

    outs = [new.decode(r) for r in raws]
    identical = outs == [old.decode(r) for r in raws]
    oks = sum(isinstance(o, Event) for o in outs)
    dead = sum(isinstance(o, DeadLetter) for o in outs)
    legacy = best_rate(old.decode, raws, args.rounds)
    compiled = best_rate(new.decode, raws, args.rounds)
    print(f"legacy decoder    {legacy:12,.0f} records/s")
    print(f"compiled presets  {compiled:12,.0f} records/s  ratio {compiled / legacy:.3f}")

    shop = orders(args.records, now)
    custom_oks = sum(isinstance(new.decode(r), Event) for r in shop)
    custom = best_rate(new.decode, shop, args.rounds)
    print(f"declared adapter  {custom:12,.0f} records/s  (shop_orders, nested paths)")
    out = {
        "records": len(raws),
        "oks": oks,
        "dead_letters": dead,
        "identical": identical,
        "legacy_per_s": round(legacy),
        "presets_per_s": round(compiled),
        "ratio": round(compiled / legacy, 3),
        "custom_records": len(shop),
        "custom_oks": custom_oks,
        "custom_per_s": round(custom),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
