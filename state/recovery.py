"""The Bytewax recovery directory: created idempotently, refused with the fix when damaged.

`prepare_recovery` creates the partitions of a new directory (then a marker file records how
many); it never deletes or re-creates one. `check_recovery_directory` refuses a directory
whose partition files are missing (the marker says they existed), unreadable, or from
different directories, with a `RecoveryDirectoryError` whose message names the fix.
`run.py` calls both; `flows.pipeline.build` calls the check for `python -m bytewax.run -r DIR`.

Bytewax 0.21.1 has no public API to read a partition's index and count before it runs (its
own checks fail later, with less to go on), so `_read_partition` reads them from the
partition file's SQLite `parts` table. This module is the one place that knows Bytewax's
storage format (`recovered_state_digest`, used by the fault scenarios, reads it too).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from pathlib import Path

from bytewax.recovery import init_db_dir


def _read_partition(path: Path) -> list[tuple[int, int]]:
    """`(part_index, part_count)` rows of one Bytewax recovery partition file.

    Private format: Bytewax 0.21.1 offers no public reader (see the module docstring).
    """
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("select part_index, part_count from parts").fetchall()
    finally:
        con.close()
    return [(int(i), int(c)) for i, c in rows]


def recovered_state_digest(directory: Path) -> dict[str, str]:
    """Per partition file, a hash of its snapshot rows and commit epochs (of the file's bytes
    when SQLite cannot read it): equal digests mean the same recovered state.

    Bytewax adds an execution row at every start, so the files' bytes change while the
    snapshots and commits must not. Private format, as `_read_partition`.
    """
    out: dict[str, str] = {}
    for p in sorted(directory.glob("part-*.sqlite3")):
        try:
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            try:
                snaps = con.execute(
                    "select step_id, state_key, snap_epoch, ser_change from snaps"
                ).fetchall()
                commits = con.execute("select part_index, commit_epoch from commits").fetchall()
            finally:
                con.close()
            digest = repr((sorted(snaps), sorted(commits))).encode()
        except sqlite3.Error:
            digest = p.read_bytes()
        out[p.name] = hashlib.sha256(digest).hexdigest()
    return out


RECOVERY_MARKER = "contextstream-recovery.json"
"""Written next to the partitions when this launcher creates them."""


class RecoveryDirectoryError(RuntimeError):
    """The recovery directory is damaged or mismatched; nothing was deleted or re-created.

    The message names the fix: restore the named partition files from one consistent backup,
    or point `-r` at a new empty directory to start over (re-reading the inputs from their
    beginning; answers still in the LLM response cache are not requested again).
    """


def recovery_problems(directory: Path) -> list[str]:
    """What is wrong with the partition files in `directory` (empty: usable or new)."""
    parts = sorted(directory.glob("part-*.sqlite3"))
    marker = directory / RECOVERY_MARKER
    if not parts:
        if marker.exists():
            return [
                f"{directory} has no partition files, but {RECOVERY_MARKER} says "
                f"{marker.read_text().strip()}: the partitions were deleted. Restore them from "
                "backup, or point -r at a new empty directory to start over"
            ]
        return []
    problems: list[str] = []
    found: dict[int, tuple[str, int]] = {}
    for p in parts:
        try:
            rows = _read_partition(p)
        except sqlite3.Error as exc:
            problems.append(
                f"{p} is not a readable Bytewax recovery partition ({exc}); restore it from "
                "the same backup as the other partition files"
            )
            continue
        if len(rows) != 1:
            problems.append(f"{p} holds {len(rows)} partition records; restore it from backup")
            continue
        index, count = rows[0]
        if index in found:
            problems.append(
                f"{p} and {found[index][0]} are both partition {index}; keep the one that "
                "belongs with the others (restore a consistent backup)"
            )
        found[index] = (p.name, count)
    counts = {c for _, c in found.values()}
    if len(counts) > 1:
        detail = ", ".join(f"{n}: {i} of {c}" for i, (n, c) in sorted(found.items()))
        problems.append(
            f"partition files in {directory} come from different recovery directories "
            f"({detail}); restore a consistent set of partition backups"
        )
    elif counts:
        (count,) = counts
        missing = sorted(set(range(count)) - set(found))
        if missing and not problems:
            problems.append(
                f"{directory} is missing partition(s) {missing} of {count}; restore them from "
                "backup, or point -r at a new empty directory to start over"
            )
    return problems


def check_recovery_directory(directory: Path) -> None:
    """Raise `RecoveryDirectoryError` naming the fix if `directory` is damaged."""
    problems = recovery_problems(directory)
    if problems:
        msg = (
            "recovery directory refused (nothing was deleted): "
            + "; ".join(problems)
            + ". See docs/RELIABILITY.md, 'Damaged recovery directory'."
        )
        raise RecoveryDirectoryError(msg)


def prepare_recovery(directory: Path, partitions: int) -> None:
    """Create recovery partitions in a new directory; refuse a damaged one (never deletes)."""
    directory.mkdir(parents=True, exist_ok=True)
    check_recovery_directory(directory)
    if not any(directory.glob("part-*.sqlite3")):
        init_db_dir(directory, partitions)
        (directory / RECOVERY_MARKER).write_text(
            json.dumps({"partitions": partitions, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        )


def recovery_directory_argument(argv: list[str] | None = None) -> Path | None:
    """The `-r DIR` / `--recovery-directory DIR` of a `python -m bytewax.run` command line."""
    argv = sys.argv if argv is None else argv
    for flag in ("-r", "--recovery-directory"):
        if flag in argv[:-1]:
            return Path(argv[argv.index(flag) + 1])
    return None
