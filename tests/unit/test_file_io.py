"""Unit tests of the JSON-lines file source and sink, driven without a dataflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.files import JsonlFileSink, JsonlFileSource, file_map
from core.records import RawRecord

LINES = [b'{"n": 1}', b"", b'{"n": 2}', b"   ", b'{"n": 3}', b'{"n": 4}', b'{"n": 5}']


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    # CRLF on one line: the line ending is not part of the record.
    path.write_bytes(b"\n".join(LINES[:4]) + b"\n" + b"\r\n".join(LINES[4:]) + b"\r\n")
    return path


def values(batch: list[RawRecord]) -> list[tuple[int, bytes | None]]:
    return [(r.offset, r.value) for r in batch]


def test_list_parts_one_per_file() -> None:
    src = JsonlFileSource({"a.jsonl": "chat", "b.jsonl": "metrics"})
    assert src.list_parts() == ["a.jsonl", "b.jsonl"]
    assert file_map([("./data/x.jsonl", "s")]) == {"data/x.jsonl": "s"}


def test_reads_batches_with_line_numbers_and_skips_blank_lines(events_file: Path) -> None:
    path = str(events_file)
    part = JsonlFileSource({path: "sample"}, batch_size=3).build_part("in", path, None)
    try:
        first = part.next_batch()
        # Three lines read: 1, 2 (blank), 3.
        assert values(first) == [(1, b'{"n": 1}'), (3, b'{"n": 2}')]
        assert first[0] == RawRecord(f"file:{path}", 0, 1, None, b'{"n": 1}', "sample")
        assert values(part.next_batch()) == [(5, b'{"n": 3}'), (6, b'{"n": 4}')]
        assert values(part.next_batch()) == [(7, b'{"n": 5}')]
        with pytest.raises(StopIteration):
            part.next_batch()
    finally:
        part.close()


def test_resume_from_snapshot_continues_at_next_line(events_file: Path) -> None:
    path = str(events_file)
    src = JsonlFileSource({path: "sample"}, batch_size=3)
    part = src.build_part("in", path, None)
    assert part.snapshot() == (0, 0)
    part.next_batch()
    snap = part.snapshot()
    assert snap[1] == 3
    part.next_batch()  # read past the snapshot, then "crash"
    part.close()

    resumed = src.build_part("in", path, snap)
    try:
        rest: list[tuple[int, bytes | None]] = []
        while True:
            try:
                rest.extend(values(resumed.next_batch()))
            except StopIteration:
                break
        assert rest == [(5, b'{"n": 3}'), (6, b'{"n": 4}'), (7, b'{"n": 5}')]
        assert resumed.snapshot() == (events_file.stat().st_size, 7)
    finally:
        resumed.close()


def test_resume_at_end_stops_at_once(events_file: Path) -> None:
    path = str(events_file)
    src = JsonlFileSource({path: "sample"})
    part = src.build_part("in", path, None)
    assert len(part.next_batch()) == 5
    end = part.snapshot()
    part.close()
    again = src.build_part("in", path, end)
    try:
        with pytest.raises(StopIteration):
            again.next_batch()
    finally:
        again.close()


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    part = JsonlFileSource({str(path): "s"}).build_part("in", str(path), None)
    try:
        assert values(part.next_batch()) == [(1, b'{"a": 1}'), (2, b'{"a": 2}')]
    finally:
        part.close()


# --- sink -----------------------------------------------------------------------------------


def test_sink_appends_lines(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    sink = JsonlFileSink(str(out_dir), "responses")
    part = sink.build("out", 0, 1)
    part.write_batch([(None, b'{"a":1}'), (b"k", b'{"b":2}')])
    part.write_batch([(None, json.dumps({"c": "ünï"}, ensure_ascii=False).encode())])
    part.close()
    path = out_dir / "responses.jsonl"
    assert path.read_bytes().splitlines() == [b'{"a":1}', b'{"b":2}', '{"c": "ünï"}'.encode()]

    # A second run appends instead of truncating.
    part = sink.build("out", 0, 1)
    part.write_batch([(None, b'{"d":4}')])
    part.close()
    assert [json.loads(line) for line in path.read_bytes().splitlines()] == [
        {"a": 1},
        {"b": 2},
        {"c": "ünï"},
        {"d": 4},
    ]


def test_sink_writes_are_visible_before_close(tmp_path: Path) -> None:
    part = JsonlFileSink(str(tmp_path), "alerts").build("out", 0, 1)
    try:
        part.write_batch([(None, b"{}")])
        assert (tmp_path / "alerts.jsonl").read_bytes() == b"{}\n"
    finally:
        part.close()


def test_sink_one_file_per_worker(tmp_path: Path) -> None:
    sink = JsonlFileSink(str(tmp_path), "dlq")
    parts = [sink.build("out", i, 2) for i in range(2)]
    for i, part in enumerate(parts):
        part.write_batch([(None, f'{{"w":{i}}}'.encode())])
        part.close()
    assert (tmp_path / "dlq.w0.jsonl").read_bytes() == b'{"w":0}\n'
    assert (tmp_path / "dlq.w1.jsonl").read_bytes() == b'{"w":1}\n'
    assert not (tmp_path / "dlq.jsonl").exists()
