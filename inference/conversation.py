"""Conversations that remember both sides: the assistant's replies in the memory of a prompt.

A session's memory (`operators.memory`) is Bytewax state on the worker that owns the session
and holds the user's turns, each with its id (the event id). The assistant's replies come out
of the LLM stage, later and possibly on another worker; a dataflow has no cycles to carry them
back. So the LLM stage records each reply in its response cache (`state.stores.Reply`, in the
same batch as the answer, before the answer is emitted) and, when it builds a prompt, puts
after every remembered user turn the reply recorded for it (`with_replies`).

Ordering rule: a prompt carries the reply to an earlier turn of its session when that reply
was recorded before the prompt was built. Both turns of a session go to the same LLM worker
(the stage is keyed by tenant and a shard of the entity, whatever the task: summarize items
too), which records a reply before it emits it, so a turn answered before the next turn's
request is built is always in that request. A turn still waiting for its answer (in flight,
or in the same packed request) is there without its reply.

Replays and restarts: the cache is not rewound, a reply is recorded once per turn (the first
wins, so a replay that emits the answer again adds no second reply), and the memory itself is
rewound with the snapshot, so no turn appears twice. A cache hit records the reply as well,
which carries it into this process's cache when a restart with another process count moved
the session here; until then the other processes' caches are read as peers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

from core.records import WorkItem
from state.stores import Reply, Summary

_HIDDEN = frozenset({"id", "user"})
"""Keys of a remembered turn that stay out of prompts (for replies and erasures)."""

REPLY_FIELDS: dict[str, str] = {"chat_reply": "reply"}
"""The answer field that is the assistant's side of the conversation, per answer schema."""


SUMMARY_SCHEMA = "conversation_summary"


class RepliesLookup(Protocol):
    def replies(self, tenant: str, entity: str, turn_ids: Iterable[str]) -> dict[str, str]: ...

    def summary(self, tenant: str, entity: str) -> str | None: ...


def prepare(schema_name: str, item: WorkItem, lookup: RepliesLookup, max_chars: int) -> WorkItem:
    """`item` as its prompt shows it: replies after the remembered turns and, for work with
    a memory, the conversation's running summary (`context["summary"]`). A summarize item
    gets the replies to the turns it folds and the summary so far, which it extends."""
    if schema_name == SUMMARY_SCHEMA:
        folded = replace(item, context={"memory": item.data["turns"]})
        turns = with_replies(folded, lookup, max_chars).context["memory"]
        context: dict[str, Any] = {}
        earlier = lookup.summary(item.tenant, item.entity)
        if earlier is not None:
            context["summary"] = earlier
        return replace(item, data={"turns": turns}, context=context)
    if "memory" not in item.context:
        return item
    shown = with_replies(item, lookup, max_chars)
    summary = lookup.summary(item.tenant, item.entity)
    if summary is None:
        return shown
    return replace(shown, context={"summary": summary, **shown.context})


def summary_of(schema_name: str, item: WorkItem, answer: dict[str, Any]) -> Summary | None:
    """The summary to record for a summarize item's answer (None for other tasks): it covers
    the conversation up to the last turn the item folds.

    >>> turns = [{"role": "user", "text": "hi", "ts": 5.0, "id": "m1"}]
    >>> item = WorkItem("m3#summary", (), "acme", "s1", "s1", "summarize_memory", "x",
    ...                 {"turns": turns, "fold": 1}, {}, 0.0)
    >>> summary_of("conversation_summary", item, {"summary": "The user said hi."})
    Summary(tenant='acme', entity='s1', version=(5.0, 1), text='The user said hi.')
    """
    if schema_name != SUMMARY_SCHEMA:
        return None
    text = answer.get("summary")
    if not isinstance(text, str) or not text:
        return None
    last = max((float(t.get("ts") or 0.0) for t in item.data.get("turns", ())), default=0.0)
    return Summary(item.tenant, item.entity, (last, int(item.data.get("fold", 0))), text)


def reply_of(schema_name: str, item: WorkItem, answer: dict[str, Any]) -> Reply | None:
    """The reply to record for `item`'s answer, None when its task has no conversation side.

    The reply is to the item's event (the memory's turn id), also when a route sent the
    event to several tasks and this item's id is `{event_id}/{task}`.

    >>> item = WorkItem("m1", ("m1",), "acme", "s1", "u1", "chat_reply", "x", {}, {}, 0.0)
    >>> reply_of("chat_reply", item, {"reply": "Hello!", "intent": "greeting"})
    Reply(tenant='acme', entity='s1', turn_id='m1', text='Hello!')
    >>> second = WorkItem("m1/chat_reply", ("m1",), "acme", "s1", "u1", "chat_reply", "x",
    ...                   {}, {}, 0.0)
    >>> reply_of("chat_reply", second, {"reply": "Hi"}).turn_id
    'm1'
    >>> reply_of("anomaly_explanation", item, {"summary": "spike"}) is None
    True
    """
    field = REPLY_FIELDS.get(schema_name)
    if field is None:
        return None
    text = answer.get(field)
    if not isinstance(text, str) or not text:
        return None
    turn_id = item.event_ids[0] if len(item.event_ids) == 1 else item.item_id
    return Reply(item.tenant, item.entity, turn_id, text)


def with_replies(item: WorkItem, lookup: RepliesLookup, max_chars: int = 1000) -> WorkItem:
    """`item` with each remembered user turn followed by the reply recorded for it (cut to
    `max_chars`, as the memory cuts turns). Turn ids are left out of the prompt.

    Turns without an id (memory from before turns had ids, business events) stay as they are;
    a turn's user (kept for erasures) is left out too.

    >>> class Recorded:
    ...     def replies(self, tenant, entity, turn_ids):
    ...         return {t: f"reply to {t}" for t in turn_ids if t == "m1"}
    >>> memory = [{"role": "user", "text": "hi", "id": "m1"},
    ...           {"role": "user", "text": "still there?", "id": "m2"}]
    >>> item = WorkItem("m3", ("m3",), "acme", "s1", "u1", "chat_reply", "x", {"text": "?"},
    ...                 {"memory": memory}, 0.0)
    >>> with_replies(item, Recorded()).context["memory"]
    [{'role': 'user', 'text': 'hi'}, {'role': 'assistant', 'text': 'reply to m1'}, \
{'role': 'user', 'text': 'still there?'}]
    """
    memory = item.context.get("memory")
    if not memory:
        return item
    ids = [t["id"] for t in memory if "id" in t]
    if not ids:
        return item
    found = lookup.replies(item.tenant, item.entity, ids)
    turns: list[dict[str, Any]] = []
    for turn in memory:
        turn_id = turn.get("id")
        if turn_id is None:
            turns.append(turn)
            continue
        turns.append({k: v for k, v in turn.items() if k not in _HIDDEN})
        reply = found.get(turn_id)
        if reply is not None:
            if len(reply) > max_chars:
                reply = reply[: max_chars - 1] + "…"
            turns.append({"role": "assistant", "text": reply})
    return replace(item, context={**item.context, "memory": turns})
