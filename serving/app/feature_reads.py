"""What a replica reads of the features: online Feast rows (user features, item co-occurrence)
through :class:`FeastReader`, and the learner's popular items (counts and categories, its fold of
the event log) through :class:`PopularItems`. Every source is optional: without a Feast store or
for an unknown entity a read is empty, and popularity is the fallback for everything.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, TYPE_CHECKING

from ray.serve.handle import DeploymentHandle

from serving.app.refresh import BackgroundRefresh

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

log = logging.getLogger(__name__)

POPULARITY_CACHE_S = 2.0
# Items the learner's popularity list is pulled with: their counts and categories are features.
POPULAR_PULL = 2_000


# -- Feast -----------------------------------------------------------------------------------


class FeastReader:
    """Online feature reads through Feast when a store was applied; None / {} otherwise."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: Any = None
        self._readers: dict[tuple[str, ...], Any] = {}  # one OnlineReader per refs: its set-up is per refs
        self._checked_at = -math.inf
        # Imported now (it imports Feast: seconds), so that the replica's start pays for it and not
        # its first request, which would stall every request queued behind it.
        import features.repo  # noqa: F401

    def _get_store(self) -> Any:
        if self._store is not None:
            return self._store
        if time.monotonic() - self._checked_at < self._settings.serving.refresh_s:
            return None
        self._checked_at = time.monotonic()
        try:
            from features.repo import feast_repo_dir, get_feature_store

            repo = feast_repo_dir(self._settings)
            if self._settings.feast.online_store == "sqlite" and not (repo / "registry.db").exists():
                return None
            self._store = get_feature_store(self._settings)
        except Exception as exc:  # noqa: BLE001 - no Feast is a cold start
            log.info("Feast not available: %s", exc)
            self._store = None
        return self._store

    def online(self, refs: list[str], key: str, value: str) -> dict[str, Any]:
        """Feature name -> value of one entity (missing / None values dropped)."""
        store = self._get_store()
        if store is None:
            return {}
        try:
            reader = self._readers.get(tuple(refs))
            if reader is None:
                from features.online import OnlineReader

                reader = self._readers[tuple(refs)] = OnlineReader(store, refs)
            if reader.join_key != key:
                raise ValueError(f"refs {refs} are keyed by {reader.join_key!r}, not {key!r}")
            return reader.read(value)
        except Exception as exc:  # noqa: BLE001 - a failed read serves the fallbacks, never an error
            log.warning("Feast online read failed: %s", exc)
            return {}

    def user(self, user_id: str | None) -> dict[str, Any]:
        """Feast user features (empty without Feast / for an unknown user)."""
        return self.online(USER_REFS, "user_id", user_id) if user_id else {}

    def cooccurring(self, item_id: str) -> list[str]:
        """Items bought together with ``item_id`` in sessions (Feast co-occurrence), best first."""
        row = self.online(COOCCURRENCE_REFS, "item_id", item_id)
        return [i for i in (row.get("co_item_ids") or []) if isinstance(i, str)]


USER_REFS = [
    *(f"user_features:{t}_count_24h" for t in ("view", "add_to_cart", "purchase", "click", "impression")),
    "user_features:top_category_ids",
    "user_features:top_category_scores",
    "user_features:seq_item_ids",
    # what the user did to each item of the sequence: the ranker's reasons ("because you bought X")
    "user_features:seq_event_types",
    "user_features:last_seen_unix",  # the bandit's recency feature
]
COOCCURRENCE_REFS = ["item_cooccurrence:cross_item_ids", "item_cooccurrence:cross_scores", "item_cooccurrence:co_item_ids"]


# -- the learner's popular items -------------------------------------------------------------


class PopularItems:
    """The learner's most popular items (its fold of the event log), pulled at most every
    ``POPULARITY_CACHE_S`` per replica in the background; the last list is served meanwhile."""

    def __init__(self, learner: DeploymentHandle) -> None:
        self._learner = learner
        self._items: list[tuple[str, float, str | None]] = []
        self.category_of: dict[str, str | None] = {}  # of the pulled list, built once per pull
        self.count_of: dict[str, float] = {}  # likewise: item -> popularity
        self.version = 0  # pulls that changed the list: what caches derived from it compare against
        self._refresh = BackgroundRefresh(self._pull, POPULARITY_CACHE_S, "popular items")

    async def _pull(self) -> None:
        items = await self._learner.popular_items.remote(POPULAR_PULL)
        if items != self._items:  # unchanged (no new events): the derived caches stay valid
            self._items, self.category_of = items, {i: c for i, _, c in items}
            self.count_of = {i: score for i, score, _ in items}
            self.version += 1

    async def get(self, n: int) -> list[tuple[str, float, str | None]]:
        await self._refresh.ensure()
        return self._items[:n]
