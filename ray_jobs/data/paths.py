"""Where the read-only datasets live.

Order: an explicit argument, then ``$STREAMREC_DATA__DATASETS_DIR``, then ``<repo root>/../shared/datasets``.
Resolve it on the driver and pass the absolute path to workers: under ``ray job submit --working-dir``
the code runs from a copy, so a path relative to the repository would point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATASETS_DIR_ENV", "default_datasets_dir", "resolve_datasets_dir"]

DATASETS_DIR_ENV = "STREAMREC_DATA__DATASETS_DIR"


def default_datasets_dir() -> Path:
    """The datasets directory from the environment, else next to the repository."""
    env = os.environ.get(DATASETS_DIR_ENV)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return (repo_root / ".." / "shared" / "datasets").resolve()


def resolve_datasets_dir(datasets_dir: str | os.PathLike[str] | None) -> Path:
    """``datasets_dir`` if given, else :func:`default_datasets_dir`; must exist."""
    path = Path(datasets_dir) if datasets_dir is not None else default_datasets_dir()
    if not path.is_dir():
        raise FileNotFoundError(
            f"datasets directory {path} not found; pass it explicitly or set ${DATASETS_DIR_ENV}"
        )
    return path.resolve()
