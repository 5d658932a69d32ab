"""The one atomic write (streamrec/runtime/files.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from streamrec.runtime.files import atomic_path, write_atomically


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "state.json"
    write_atomically(target, "first")
    write_atomically(target, b"second \xff")
    assert target.read_bytes() == b"second \xff"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_the_mode_is_applied_to_the_new_file(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_atomically(target, "<html/>", mode=0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "lake.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["lake.parquet"]


def test_the_temporary_is_dot_prefixed_beside_the_target(tmp_path: Path) -> None:
    # Dot-prefixed: the lake's and Feast's directory readers skip it while it is being written.
    target = tmp_path / "asof-1-batch.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".")
        tmp.write_text("new")
    assert target.read_text() == "new"
