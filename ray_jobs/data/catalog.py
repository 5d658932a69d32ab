"""Dataset adapters by name, as used in the job configs.

Example:
    >>> data = load_dataset("gowalla", max_users=500, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.gowalla import load_gowalla
from ray_jobs.data.lake import DEFAULT_EVENT_TYPES, load_lake
from ray_jobs.data.lake_bundles import BUNDLE_EVENT_TYPES, load_lake_bundles
from ray_jobs.data.recbole_atomic import load_recbole_atomic
from ray_jobs.data.sasrec_games import load_sasrec_games
from ray_jobs.data.session_benchmark import load_session_benchmark
from ray_jobs.data.slicing import subsample_users
from ray_jobs.data.taobao import load_taobao, load_taobao_sessions
from ray_jobs.data.youshu import load_youshu

__all__ = ["DATASETS", "LAKE_DATASETS", "LAKE_EVENT_TYPES", "load_dataset"]

DATASETS: dict[str, Callable[..., InteractionData]] = {
    "gowalla": load_gowalla,
    "sasrec_games": load_sasrec_games,
    "youshu": load_youshu,
    "recbole": load_recbole_atomic,
    "taobao": load_taobao,
    "taobao_sessions": load_taobao_sessions,  # session-based form (protocol: session)
    "session_benchmark": load_session_benchmark,  # a published session benchmark's folder, as given
    "lake": load_lake,  # the event lake the feature pipeline writes (not a shared dataset)
    "lake_bundles": load_lake_bundles,  # bundles mined from that lake, user-bundle interactions
}
# Datasets read from the event lake (pinned by the launcher: root, until, snapshot), with the event
# types each reads unless the job's ``event_types`` option says otherwise.
LAKE_EVENT_TYPES: dict[str, tuple[str, ...]] = {"lake": DEFAULT_EVENT_TYPES, "lake_bundles": BUNDLE_EVENT_TYPES}
LAKE_DATASETS = tuple(LAKE_EVENT_TYPES)


def load_dataset(
    name: str,
    datasets_dir: str | os.PathLike[str] | None = None,
    max_users: int | None = None,
    seed: int = 0,
    **options: Any,
) -> InteractionData:
    """Load a dataset by name, optionally sliced to ``max_users`` random users.

    Args:
        name: one of ``DATASETS``.
        datasets_dir: the shared datasets folder (ignored by ``recbole``, which takes file paths, and
            by ``lake`` / ``lake_bundles``, which take ``root``).
        max_users: keep this many users (see :func:`subsample_users`); ``None`` keeps all.
        seed: seed for the user slice.
        **options: passed to the adapter (e.g. ``valid_fraction`` for gowalla, ``inter_path`` for recbole,
            ``root`` / ``until`` / ``event_types`` for lake, and the mining and split settings for
            lake_bundles).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    if name == "recbole":
        data = load_recbole_atomic(**options)
    else:
        data = DATASETS[name](datasets_dir, **options)
    if max_users is not None:
        data = subsample_users(data, max_users, seed=seed)
    return data
