"""A versioned model registry on a local directory or any ``pyarrow.fs`` filesystem URI.

Layout under the root::

    <name>/versions/<version>/manifest.json      name, version, created_at, metrics, data snapshot id,
                                                 code version, file list (written last)
    <name>/versions/<version>/config.yaml        the job config that produced it
    <name>/versions/<version>/model.pt           best weights (state dict)
    <name>/versions/<version>/embeddings/<kind>.npy      float32 (n, d), row = id, for retrieval
    <name>/versions/<version>/embeddings/<kind>.parquet  columns ``id`` and ``embedding`` (same data)
    <name>/versions/<version>/artefacts/<file>   self-contained files serving loads without the
                                                 training code (a next-item model's exported user
                                                 encoder: ``features.registry.next_item``)
    <name>/LATEST                                the current version id

A version is written into a temporary directory and renamed into place, and ``LATEST`` is replaced by
writing a temporary file and renaming it, so readers never see half a version or half a pointer. On a
local filesystem rename is atomic; on object stores (S3, GCS) ``move`` is a copy, but a single small
object such as ``LATEST`` is still replaced in one PUT.

Example:
    >>> reg = ModelRegistry("/tmp/registry")  # doctest: +SKIP
    >>> v = reg.register("lightgcn_gowalla", embeddings={"item": items}, metrics={...}, config={...},
    ...                  data_snapshot_id="sha256:...", weights_file="best_model.pt")  # doctest: +SKIP
    >>> reg.load_latest("lightgcn_gowalla").embeddings["item"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

__all__ = ["ModelRegistry", "RegisteredModel", "ID_COLUMN", "EMBEDDING_COLUMN"]

ID_COLUMN = "id"
EMBEDDING_COLUMN = "embedding"
LATEST = "LATEST"
MANIFEST = "manifest.json"
WEIGHTS = "model.pt"
CONFIG = "config.yaml"
ARTEFACTS = "artefacts"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class RegisteredModel:
    """One loaded model version.

    Attributes:
        name, version: registry coordinates.
        manifest: the parsed ``manifest.json`` (metrics, data snapshot id, code version, ...).
        config: the job config stored with the version.
        embeddings: ``kind -> (n, d) float32`` arrays.
        weights: the raw bytes of ``model.pt`` (``None`` when registered without weights).
        artefacts: ``file name -> bytes`` of the version's ``artefacts/`` files.
    """

    name: str
    version: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    embeddings: dict[str, np.ndarray]
    weights: bytes | None
    artefacts: dict[str, bytes] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """The weights as a torch state dict."""
        import torch  # only needed by callers that rebuild the model

        if self.weights is None:
            raise ValueError(f"{self.name}:{self.version} has no weights")
        return torch.load(io.BytesIO(self.weights), map_location="cpu")


def _embedding_table(array: np.ndarray) -> pa.Table:
    array = np.ascontiguousarray(array, dtype=np.float32)
    flat = pa.array(array.reshape(-1))
    vectors = pa.FixedSizeListArray.from_arrays(flat, array.shape[1])
    return pa.table({ID_COLUMN: pa.array(np.arange(len(array), dtype=np.int64)), EMBEDDING_COLUMN: vectors})


class ModelRegistry:
    """Versioned models under ``root``: a local path or a URI such as ``s3://bucket/prefix``.

    Args:
        root: directory path, ``file://`` URI, or any URI ``pyarrow.fs.FileSystem.from_uri`` accepts.
    """

    def __init__(self, root: str | os.PathLike[str]):
        root = str(root)
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(root).resolve())
        self.fs.create_dir(self.root, recursive=True)

    # -- paths -----------------------------------------------------------------------------
    def _model_dir(self, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid model name {name!r}")
        return f"{self.root}/{name}"

    def _version_dir(self, name: str, version: str) -> str:
        return f"{self._model_dir(name)}/versions/{version}"

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def _read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    # -- writing ---------------------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        embeddings: dict[str, np.ndarray],
        metrics: dict[str, Any],
        config: dict[str, Any],
        data_snapshot_id: str,
        code_version: str = "unknown",
        weights_file: str | os.PathLike[str] | None = None,
        set_latest: bool = True,
        extra: dict[str, Any] | None = None,
        artefacts: dict[str, bytes] | None = None,
    ) -> str:
        """Write a new version of ``name`` and (by default) point ``LATEST`` at it.

        Args:
            name: model name, e.g. ``"lightgcn_gowalla"``.
            embeddings: ``kind -> (n, d)`` arrays (``user``, ``item``, ``bundle``, ...).
            metrics: final evaluation metrics, including their ``*/protocol`` strings.
            config: the job config (stored as YAML).
            data_snapshot_id: hash of the input files (see :func:`data_snapshot_id`).
            code_version: git revision of the training code.
            weights_file: a local ``state_dict`` file to store as ``model.pt``.
            set_latest: move the ``LATEST`` pointer to the new version.
            extra: more manifest keys (e.g. ``ids``: ``kind -> raw ids of the rows``, which serving
                uses to map its string ids to embedding rows); cannot replace the keys above.
            artefacts: ``file name -> bytes`` stored under ``artefacts/`` (plain file names).

        Returns:
            The new version id (UTC timestamp plus a random suffix, sortable).
        """
        created = datetime.now(timezone.utc)
        version = f"{created.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:6]}"
        staging = f"{self._model_dir(name)}/versions/.staging-{version}"
        self.fs.create_dir(f"{staging}/embeddings", recursive=True)
        files: list[str] = []
        for kind, array in embeddings.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
            self._write_bytes(f"{staging}/embeddings/{kind}.npy", buf.getvalue())
            with self.fs.open_output_stream(f"{staging}/embeddings/{kind}.parquet") as f:
                pq.write_table(_embedding_table(array), f)
            files += [f"embeddings/{kind}.npy", f"embeddings/{kind}.parquet"]
        if weights_file is not None:
            self._write_bytes(f"{staging}/{WEIGHTS}", Path(weights_file).read_bytes())
            files.append(WEIGHTS)
        if artefacts:
            self.fs.create_dir(f"{staging}/{ARTEFACTS}", recursive=True)
        for file_name, data in (artefacts or {}).items():
            if not _NAME_RE.match(file_name):
                raise ValueError(f"invalid artefact name {file_name!r}")
            self._write_bytes(f"{staging}/{ARTEFACTS}/{file_name}", data)
            files.append(f"{ARTEFACTS}/{file_name}")
        self._write_bytes(f"{staging}/{CONFIG}", yaml.safe_dump(config, sort_keys=True).encode())
        files.append(CONFIG)
        manifest = {
            "name": name,
            "version": version,
            "created_at": created.isoformat(),
            "data_snapshot_id": data_snapshot_id,
            "code_version": code_version,
            "metrics": metrics,
            "embeddings": {k: list(np.shape(v)) for k, v in embeddings.items()},
            "files": sorted(files),
        }
        clash = set(extra or {}) & set(manifest)
        if clash:
            raise ValueError(f"extra manifest keys {sorted(clash)} are reserved")
        manifest.update(extra or {})
        # The manifest goes last: a version directory with a manifest is complete.
        manifest_json = json.dumps(manifest, indent=2, sort_keys=True, default=str)
        self._write_bytes(f"{staging}/{MANIFEST}", manifest_json.encode())
        self.fs.move(staging, self._version_dir(name, version))
        if set_latest:
            self.set_latest(name, version)
        return version

    def set_latest(self, name: str, version: str) -> None:
        """Atomically point ``LATEST`` of ``name`` at an existing ``version``."""
        if not self._exists(f"{self._version_dir(name, version)}/{MANIFEST}"):
            raise FileNotFoundError(f"{name}:{version} is not a complete version")
        tmp = f"{self._model_dir(name)}/.{LATEST}.{uuid.uuid4().hex}.tmp"
        self._write_bytes(tmp, version.encode())
        self.fs.move(tmp, f"{self._model_dir(name)}/{LATEST}")  # rename: readers see old or new

    # -- reading ---------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Models with a current version (a ``LATEST`` pointer), sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(Path(i.path).name for i in infos
                      if i.type == pafs.FileType.Directory and self._exists(f"{i.path}/{LATEST}"))

    def list_versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first."""
        base = f"{self._model_dir(name)}/versions"
        if not self._exists(base):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=False))
        names = sorted(Path(i.path).name for i in infos if i.type == pafs.FileType.Directory)
        return [v for v in names if not v.startswith(".") and self._exists(f"{base}/{v}/{MANIFEST}")]

    def latest_version(self, name: str) -> str:
        """The version ``LATEST`` points at."""
        path = f"{self._model_dir(name)}/{LATEST}"
        if not self._exists(path):
            raise FileNotFoundError(f"no registered versions of {name!r} under {self.root}")
        return self._read_bytes(path).decode().strip()

    def load(self, name: str, version: str) -> RegisteredModel:
        """Load one version: manifest, config, embeddings (from ``.npy``) and weight bytes."""
        vdir = self._version_dir(name, version)
        manifest = json.loads(self._read_bytes(f"{vdir}/{MANIFEST}"))
        config = yaml.safe_load(self._read_bytes(f"{vdir}/{CONFIG}")) or {}
        embeddings = {
            kind: np.load(io.BytesIO(self._read_bytes(f"{vdir}/embeddings/{kind}.npy")))
            for kind in manifest["embeddings"]
        }
        weights = self._read_bytes(f"{vdir}/{WEIGHTS}") if WEIGHTS in manifest["files"] else None
        artefacts = {Path(f).name: self._read_bytes(f"{vdir}/{f}") for f in manifest["files"]
                     if Path(f).parts[0] == ARTEFACTS}
        return RegisteredModel(name, version, manifest, config, embeddings, weights, artefacts)

    def load_latest(self, name: str) -> RegisteredModel:
        """Load the version ``LATEST`` points at."""
        return self.load(name, self.latest_version(name))
