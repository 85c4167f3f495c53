"""Activity audit records: what ContextStream did besides calling the LLM.

Every record goes to the audit output next to the per-request LLM records and carries
`"type": "activity"`; `activity` says which of `ACTIVITIES` it is. The schema is in
docs/AUDIT.md. A record's `activity_id` is derived from what it is about (a run id, a source
coordinate, an erasure request id, a tenant and day), so a record emitted again on a replay
has the same id and a consumer can drop the repeat.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

from core.records import Audit

ACTIVITIES = frozenset(
    {"run_started", "run_stopped", "tenant_refused", "erasure_completed", "budget_spent"}
)

_RUN_ID = os.environ.get("CONTEXTSTREAM_RUN_ID") or uuid.uuid4().hex[:16]


def run_id() -> str:
    """This process's run id: new at every start (or `CONTEXTSTREAM_RUN_ID`), shared by the
    processes of a cluster only when the launcher sets it."""
    return _RUN_ID


def activity_id(activity: str, *about: object) -> str:
    """A stable id for one activity about `about` (the same on a replay)."""
    key = json.dumps([activity, *about], separators=(",", ":"), default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def activity_record(
    activity: str,
    *,
    about: tuple[object, ...],
    tenant: str | None,
    at: float,
    **fields: Any,
) -> Audit:
    """One activity record for the audit output; `about` names what it is about (it makes the
    `activity_id`), `fields` are the activity's own fields (documented in docs/AUDIT.md)."""
    if activity not in ACTIVITIES:
        msg = f"unknown activity {activity!r}; known: {sorted(ACTIVITIES)}"
        raise ValueError(msg)
    record: dict[str, Any] = {
        "type": "activity",
        "activity": activity,
        "activity_id": activity_id(activity, *about),
        "run_id": _RUN_ID,
        "tenant": tenant,
        "at": round(at, 3),
        **fields,
    }
    return Audit(record)
