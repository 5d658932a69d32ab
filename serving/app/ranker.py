"""The registered sequential ranker (SASRec, or a session GNN) for serving: its exported user
encoder and item table, loaded from the model registry with ``features.registry.next_item`` (no
training code) and reloaded when a new version becomes ``LATEST``. Which one serves is configuration: the model registered under
``serving.ranker_model``.

A version that cannot be served (no exported user encoder, as a model that is not a next-item one,
no raw item ids, an encoder that disagrees with its registered item embeddings) is refused and logged; serving keeps
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
    """Load the registered next-item model ``name:version`` (CPU).

    Raises:
        ValueError: no exported user encoder (not a next-item model, or registered before encoders
            were), no raw item ids, or an encoder whose item table is not the registered item
            embeddings (a mixed-up version).
    """
    from features.registry import ModelRegistry
    from features.registry.next_item import load_next_item_model

    return LoadedRanker(name, version, SequenceRanker(load_next_item_model(ModelRegistry(root).load(name, version))))


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
