"""The registered sequential ranker (SASRec, or the session GNN SR-GNN) for serving: loaded from
the model registry with ``ray_jobs.models.load_next_item_model`` and reloaded when a new version
becomes ``LATEST``. Which one serves is configuration: the model registered under
``serving.ranker_model``.

A version that cannot be served (not a next-item model, no ``model_config`` or raw item ids in its manifest,
weights that disagree with its registered item embeddings) is refused and logged; serving keeps
the version it had, or the retrieval order without one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from serving.app.embeddings import registered_version
from serving.recommend.sequential import SequenceRanker

log = logging.getLogger(__name__)

__all__ = ["LoadedRanker", "RankerSlot", "load_ranker"]


@dataclass(frozen=True)
class LoadedRanker:
    """One registered version, ready to score."""

    name: str
    version: str
    ranker: SequenceRanker

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def load_ranker(root: str, name: str, version: str) -> LoadedRanker:
    """Rebuild the registered next-item model ``name:version`` on CPU in eval mode.

    Raises:
        ValueError: not a next-item model, no model config or raw item ids, or weights that do not
            match the registered item embeddings (a mixed-up version).
    """
    import numpy as np

    from ray_jobs.models import load_next_item_model
    from features.registry import ModelRegistry

    registered = ModelRegistry(root).load(name, version)
    net, row_of = load_next_item_model(registered)
    items = registered.embeddings.get("item")
    if items is None or not np.allclose(net.export_embeddings()["item"], items, atol=1e-6):
        raise ValueError(f"{name}:{version}: weights and registered item embeddings disagree")
    return LoadedRanker(name, version, SequenceRanker(net, row_of))


class RankerSlot:
    """The current ranker of ``name``: re-checks ``LATEST`` every ``refresh_s`` and reloads on change.

    A version that fails to load is logged and the previous one kept; a removed ``LATEST`` drops
    the ranker (requests fall back to retrieval order).
    """

    def __init__(self, root: str, name: str, refresh_s: float) -> None:
        self.root, self.name, self.refresh_s = root, name, refresh_s
        self.current: LoadedRanker | None = None
        self._checked_at = -math.inf
        self._failed_version: str | None = None

    def refresh(self) -> LoadedRanker | None:
        if time.monotonic() - self._checked_at < self.refresh_s:
            return self.current
        self._checked_at = time.monotonic()
        version = registered_version(self.root, self.name)
        if version is None:
            self.current = None
        elif (self.current is None or version != self.current.version) and version != self._failed_version:
            self._load(version)
        return self.current

    def _load(self, version: str) -> None:
        try:
            self.current = load_ranker(self.root, self.name, version)
            log.info("ranker %s loaded", self.current.label)
        except Exception as exc:  # noqa: BLE001 - a bad version must not take serving down
            self._failed_version = version
            log.warning("ranker %s:%s not loaded (keeping %s): %s", self.name, version,
                        self.current.label if self.current else "none", exc)

    def describe(self) -> dict[str, Any]:
        return {"model": self.current.label if self.current else None, "registry_name": self.name}
