"""Writing a file so that a reader never sees half of it: the one atomic write every room uses.

The data goes to a dot-prefixed temporary file beside the target (same filesystem, so the rename
is atomic; dot-prefixed, so the lake's and Feast's directory readers skip it while it is written),
is flushed to disk, and is renamed over the target. A crash leaves the old file or the new one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_atomically"]


@contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to (by any writer, e.g. ``pq.write_table``);
    on leaving the block it is synced and renamed over ``path`` (removed instead on an exception).

    Args:
        path: the file to replace.
        mode: permission bits of the new file (default: as the writer created it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # the writer may not have synced: do it before the rename
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Replace ``path`` by ``data`` (str is written as UTF-8) atomically."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
