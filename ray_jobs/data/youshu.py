"""Youshu bundle data with the BGCN/CrossCBR split (``crosscbr/Youshu/``).

Users interact with bundles (book lists): ``user_bundle_{train,tune,test}.txt``; the item-level
graphs are ``user_item.txt`` and ``bundle_item.txt``. ``tune`` is the validation split. CrossCBR
(Ma et al., KDD 2022) ranks all bundles and masks only training bundles at test time, so
``test_excludes_valid`` is false here.

Example:
    >>> data = load_youshu()
    >>> data.n_users, data.n_items, data.bundles.n_atomic_items
    (8039, 4771, 32770)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ray_jobs.data.dataset import BundleGraphs, InteractionData
from ray_jobs.data.paths import resolve_datasets_dir

__all__ = ["load_youshu", "read_pairs"]

SUBDIR = Path("crosscbr") / "Youshu"


def read_pairs(path: Path) -> np.ndarray:
    """Read a two-column tab-separated integer file into ``(n, 2)`` int64."""
    return pd.read_csv(path, sep="\t", header=None, dtype=np.int64).to_numpy()[:, :2].copy()


def load_youshu(datasets_dir: str | os.PathLike[str] | None = None) -> InteractionData:
    """Load Youshu: users x bundles as the main task, plus U-I and B-I graphs.

    Args:
        datasets_dir: folder holding ``crosscbr/Youshu/`` (see :mod:`ray_jobs.data.paths`).

    Returns:
        An :class:`InteractionData` whose items are bundles and whose ``bundles`` field holds the
        item-level graphs.
    """
    root = Path(resolve_datasets_dir(datasets_dir)) / SUBDIR
    sizes = (root / "Youshu_data_size.txt").read_text().split()
    n_users, n_bundles, n_items = (int(x) for x in sizes[:3])
    files = {s: root / f"user_bundle_{s}.txt" for s in ("train", "tune", "test")}
    ui_path, bi_path = root / "user_item.txt", root / "bundle_item.txt"
    return InteractionData(
        name="youshu",
        n_users=n_users,
        n_items=n_bundles,
        train=read_pairs(files["train"]),
        valid=read_pairs(files["tune"]),
        test=read_pairs(files["test"]),
        test_excludes_valid=False,
        bundles=BundleGraphs(
            n_atomic_items=n_items, user_item=read_pairs(ui_path), bundle_item=read_pairs(bi_path)
        ),
        source_files=tuple(str(p) for p in (root / "Youshu_data_size.txt", *files.values(), ui_path, bi_path)),
    )
