"""Provenance stamps for registered models: data snapshot id and code version."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_jobs.data.dataset import InteractionData

__all__ = ["data_snapshot_id", "code_version", "describe_data"]

_CHUNK = 1 << 20


def data_snapshot_id(paths: Iterable[str | os.PathLike[str]]) -> str:
    """``sha256:<hex>`` over the base names and bytes of the input files, in sorted name order.

    The same files anywhere on disk give the same id; any byte change gives a new one.

    Example:
        >>> data_snapshot_id([])
        'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    for path in sorted((Path(p) for p in paths), key=lambda p: (p.name, str(p))):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def code_version(repo_dir: str | os.PathLike[str] | None = None) -> str:
    """The git commit of ``repo_dir`` (``+dirty`` with uncommitted changes), or ``"unknown"``.

    Under ``ray job submit`` the working dir is a copy without ``.git``; set ``STREAMREC_CODE_VERSION``
    on the submitting side to carry the version through.
    """
    if env := os.environ.get("STREAMREC_CODE_VERSION"):
        return env
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe_data(data: "InteractionData") -> dict[str, Any]:
    """What a model was trained on, JSON-ready: the registry's ``data_snapshot_id``, the source's own
    snapshot (the event lake's partitions, max event time and row count), the raw ids of the rows
    (``user`` / ``item``; for bundle data ``user`` / ``bundle`` / ``item``, the atomic items) and, for
    bundle data with raw item ids, ``bundle_items``: each bundle's raw item ids.

    Computed where the data was loaded (the training worker), so that registering never re-reads a
    source that may have changed since (the lake grows while a model trains).

    Example:
        >>> describe_data(load_dataset("taobao"))["snapshot_id"]  # doctest: +SKIP
        'sha256:...'
    """
    snapshot = data.source_snapshot
    bundles = data.bundles
    # Bundle data: the rows of the main task are bundles; "item" names the atomic items.
    kinds = (("user", data.user_ids), ("item", data.item_ids)) if bundles is None else (
        ("user", data.user_ids), ("bundle", data.item_ids), ("item", bundles.item_ids))
    info = {
        "dataset": data.name,
        "snapshot_id": snapshot["id"] if snapshot else data_snapshot_id(data.source_files),
        "snapshot": snapshot,
        "ids": {kind: [str(v) for v in raw.tolist()] for kind, raw in kinds if raw is not None},
    }
    if bundles is not None and bundles.item_ids is not None:
        info["bundle_items"] = bundles.items_of_bundles(data.n_items)  # what serving shows per bundle
    return info
