"""Reading what a flow wrote with the file output (`output.kind = "file"`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_outputs(tmp: Path, name: str) -> list[dict[str, Any]]:
    """Every record of output `name` (its `name*.jsonl` files, in order) under `tmp/out`."""
    out: list[dict[str, Any]] = []
    for f in sorted((tmp / "out").glob(f"{name}*.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines())
    return out
