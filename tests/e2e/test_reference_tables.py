"""Reference data on the broker: each process's profile table is read to its end before any
event is enriched, follows updates during the run, and holds every profile whichever
partitions the process's workers read (issue 9, points 2 and 3)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rocksdict import AccessType, Options, Rdict

from config.models import SourceConfig
from connectors.reference import ReferenceBootstrapError, ReferenceTable, close_references
from llmsim import LLMSimulator
from state.stores import ProfileStore, StoreLayout, close_all
from support import workload
from support.broker import create_topic, produce
from support.harness import Deployment, prompt_items, wait_exit, wait_until

USERS = 12


@pytest.fixture(autouse=True)
def _release_stores() -> Iterator[None]:
    yield
    close_references()
    close_all()


def profile(user: int, version: int) -> str:
    return json.dumps(
        {
            "tenant": "acme",
            "entity": f"u-{user:04d}",
            "attributes": {"plan": f"plan-v{version}", "user": user},
            "version": version,
        }
    )


def table(bootstrap: str, topic: str, store: Path, timeout_s: float = 30.0) -> ReferenceTable:
    source = SourceConfig(name="profiles", topic=topic)
    settings = {"bootstrap.servers": bootstrap}
    return ReferenceTable(source, store, settings, timeout_s=timeout_s, tail=True)


def test_bootstrap_reads_every_partition_to_its_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Three versions of 60 profiles over three partitions, produced before the start: the
    bootstrap leaves the newest of each; a restart reads nothing again; an update produced
    afterwards is followed."""
    topic = create_topic(kafka_bootstrap, f"profiles-{time.time_ns()}", 3)
    for version in (1, 2, 3):
        recs = [(f"u-{u:04d}", profile(u, version).encode()) for u in range(60)]
        produce(kafka_bootstrap, topic, recs)
    store_path = tmp_path / "profiles"

    first = table(kafka_bootstrap, topic, store_path)
    assert first.bootstrap() >= 60  # per batch, only the newest of a key is written
    store = ProfileStore(store_path)
    assert all(store.get("acme", f"u-{u:04d}") == {"plan": "plan-v3", "user": u} for u in range(60))
    assert sum(1 for origin in store.positions() if origin.startswith(topic)) == 3
    first.close()
    close_all()

    again = table(kafka_bootstrap, topic, store_path)
    assert again.bootstrap() == 0  # positions committed with the data: nothing re-applied
    again.follow()
    produce(kafka_bootstrap, topic, [("u-0007", profile(7, 4).encode())])
    store = ProfileStore(store_path)
    deadline = time.monotonic() + 30
    while store.get("acme", "u-0007") != {"plan": "plan-v4", "user": 7}:
        assert time.monotonic() < deadline, "the followed update never arrived"
        time.sleep(0.1)
    again.close()


def test_bootstrap_timeout_names_the_setting(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = create_topic(kafka_bootstrap, f"profiles-{time.time_ns()}", 1)
    produce(kafka_bootstrap, topic, [(None, profile(1, 1).encode())])
    slow = table(kafka_bootstrap, topic, tmp_path / "profiles", timeout_s=1e-9)
    with pytest.raises(ReferenceBootstrapError, match=r"stores\.bootstrap_timeout_s") as err:
        slow.bootstrap()
    assert "profiles" in str(err.value) and topic in str(err.value)
    slow.close()


def _stores_hold(layout_root: Path, processes: int, version: int) -> bool:
    """Whether every process's profile store holds `version` for every user (read-only, as
    the processes hold the stores)."""
    for i in range(processes):
        path = StoreLayout(layout_root, i).profiles
        if not (path / "CURRENT").exists():
            return False
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for u in range(USERS):
                raw = db.get(f"acme/u-{u:04d}".encode())
                if raw is None or json.loads(raw)["version"] != version:
                    return False
        finally:
            db.close()
    return True


def _answered(dep: Deployment, prefix: str) -> Counter[str]:
    return Counter(
        i
        for r in dep.drain("responses", idle_s=0.5)
        if r["task"] == "chat_reply"
        for i in r["event_ids"]
        if i.startswith(prefix)
    )


def _wait_answered(dep: Deployment, prefix: str, n: int, procs: list[Any]) -> None:
    wait_until(
        lambda: len(_answered(dep, prefix)) >= n, f"chats {prefix}-* answered", procs, every_s=0.5
    )


@pytest.mark.parametrize(
    ("processes", "workers"),
    [(1, 1), (1, 2), (2, 1)],
    ids=["1-process", "w2", "2-processes"],
)
def test_every_chat_carries_the_profile_as_of_its_processing(
    kafka_bootstrap: str, llm_sim: LLMSimulator, tmp_path: Path, processes: int, workers: int
) -> None:
    """Profiles produced before the start are on every chat of the first batch, at one
    process, two workers and two processes of one config; updated during the run, the new
    version is on every chat of the second batch. Each chat is answered once."""
    dep = Deployment(kafka_bootstrap, tmp_path, llm_sim.base_url, partitions=2, tail=True)
    produce(
        kafka_bootstrap,
        dep.topics["profiles"],
        [(None, profile(u, 1).encode()) for u in range(USERS)],
    )
    first = workload.chats(4 * USERS, sessions=USERS, prefix="a")
    produce(kafka_bootstrap, dep.topics["chat"], first)
    procs = dep.start_cluster(processes, workers=workers)
    try:
        _wait_answered(dep, "a-", len(first), procs)
        produce(
            kafka_bootstrap,
            dep.topics["profiles"],
            [(None, profile(u, 2).encode()) for u in range(USERS)],
        )
        deadline = time.monotonic() + 60
        while not _stores_hold(dep.workdir / "stores", processes, 2):
            assert time.monotonic() < deadline, "a process never applied the update"
            time.sleep(0.2)
        second = workload.chats(4 * USERS, sessions=USERS, prefix="b")
        produce(kafka_bootstrap, dep.topics["chat"], second)
        _wait_answered(dep, "b-", len(second), procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
    for i, p in enumerate(procs):
        name = "flow" if processes == 1 else f"flow-p{i}"
        assert wait_exit(p, dep, log_name=name) == 0, dep.log(name)[-3000:]

    answered = _answered(dep, "a-") + _answered(dep, "b-")
    assert set(answered.values()) == {1}
    assert len(answered) == len(first) + len(second)
    items = [i for r in llm_sim.requests() if r["status"] == 200 for i in prompt_items(r)]
    assert {i["id"] for i in items} == set(answered)
    for item in items:
        user = int(item["id"][2:]) % USERS
        version = 1 if item["id"].startswith("a-") else 2
        assert item["context"].get("profile") == {"plan": f"plan-v{version}", "user": user}, item
