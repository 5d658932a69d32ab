"""Dataset adapters returning :class:`InteractionData` (train/valid/test pairs with 0-based ids).

Example:
    >>> from ray_jobs.data import load_dataset
    >>> data = load_dataset("youshu")  # doctest: +SKIP
    >>> print(data.summary())  # doctest: +SKIP
"""

from ray_jobs.data.dataset import BundleGraphs, InteractionData
from ray_jobs.data.gowalla import load_gowalla
from ray_jobs.data.lake import LakeChangedError, LakeSnapshot, load_lake
from ray_jobs.data.lake_bundles import load_lake_bundles
from ray_jobs.data.paths import DATASETS_DIR_ENV, default_datasets_dir, resolve_datasets_dir
from ray_jobs.data.recbole_atomic import load_recbole_atomic
from ray_jobs.data.catalog import DATASETS, load_dataset
from ray_jobs.data.sasrec_games import load_sasrec_games
from ray_jobs.data.slicing import subsample_users
from ray_jobs.data.taobao import load_taobao, load_taobao_sessions
from ray_jobs.data.youshu import load_youshu

__all__ = [
    "InteractionData",
    "BundleGraphs",
    "DATASETS",
    "DATASETS_DIR_ENV",
    "default_datasets_dir",
    "resolve_datasets_dir",
    "load_dataset",
    "load_gowalla",
    "load_sasrec_games",
    "load_youshu",
    "load_recbole_atomic",
    "load_taobao",
    "load_taobao_sessions",
    "load_lake",
    "load_lake_bundles",
    "LakeSnapshot",
    "LakeChangedError",
    "subsample_users",
]
