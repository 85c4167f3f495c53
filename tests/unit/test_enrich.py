"""Knowledge lookups of work items: tenant-scoped, cached while the index is unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config.models import KnowledgeUse
from core.records import WorkItem
from operators.enrich import KnowledgeLookup, knowledge_query
from state.knowledge import KnowledgeUpdate, SqliteKnowledgeIndex


def work(tenant: str, text: str, task: str = "chat_reply") -> WorkItem:
    return WorkItem("m1", ("m1",), tenant, "s1", "u1", task, "x", {"text": text}, {}, 0.0)


class Counting:
    """The index, counting searches."""

    def __init__(self, index: SqliteKnowledgeIndex) -> None:
        self.index = index
        self.searches = 0

    @property
    def generation(self) -> int:
        return self.index.generation

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        return self.index.search(*args, **kwargs)


def test_repeated_questions_are_answered_from_the_cache_until_the_index_changes(
    tmp_path: Path,
) -> None:
    index = SqliteKnowledgeIndex(tmp_path / "k.sqlite")
    index.apply([KnowledgeUpdate("acme", "kb-1", 1, "Passwords", "Reset the password here.")])
    counting = Counting(index)
    lookup = KnowledgeLookup(lambda: counting, {"chat_reply": KnowledgeUse(top_k=2)})  # type: ignore[arg-type, return-value]

    def cited(item: WorkItem) -> list[tuple[str, int]]:
        return [
            (c["doc_id"], c["version"]) for c in lookup.apply(item).context.get("knowledge", [])
        ]

    assert cited(work("acme", "reset my password")) == [("kb-1", 1)]
    assert cited(work("acme", "reset my password")) == [("kb-1", 1)]
    assert counting.searches == 1
    assert cited(work("globex", "reset my password")) == []  # another tenant: its own entry
    assert counting.searches == 2
    index.apply([KnowledgeUpdate("acme", "kb-1", 2, "Passwords", "Reset the password, v2.")])
    assert cited(work("acme", "reset my password")) == [("kb-1", 2)]
    assert counting.searches == 3
    assert lookup.apply(work("acme", "reset my password", task="other")).context == {}
    index.close()


def test_the_query_is_the_text_without_redaction_placeholders() -> None:
    assert knowledge_query(work("acme", "write to [EMAIL] about it")) == "write to   about it"
