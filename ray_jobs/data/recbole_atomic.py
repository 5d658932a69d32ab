"""RecBole atomic files: ``<name>.inter`` plus an optional ``<name>.item``.

Atomic files are tab-separated with a typed header such as
``user_id:token\titem_id:token\ttimestamp:float`` (RecBole docs, "Atomic Files"). Tokens are mapped
to 0-based ids in sorted token order. Interactions are ordered by timestamp within each user when a
timestamp column exists (else file order), then split either leave-one-out (last = test, second
last = valid, as SASRec) or by per-user ratio in time order (RecBole's ``RS: [0.8, 0.1, 0.1]`` with
``order: TO``).

Example:
    >>> data = load_recbole_atomic("tests/data/recbole_tiny/tiny.inter")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.sasrec_games import leave_one_out

__all__ = ["load_recbole_atomic", "read_atomic", "ratio_split"]

USER_FIELD = "user_id"
ITEM_FIELD = "item_id"
TIME_FIELD = "timestamp"
CATEGORY_FIELDS = ("categories", "category", "genre", "class")  # tried in this order


def read_atomic(path: Path) -> pd.DataFrame:
    """Read an atomic file; columns are renamed to the field name without its ``:type`` suffix."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def ratio_split(
    pairs: np.ndarray, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user chronological split by ratio; every user keeps at least one training row.

    Args:
        pairs: ``(n, 2)`` rows, each user's rows in time order.
        ratios: train/valid/test shares (normalised to sum 1).
    """
    r = np.asarray(ratios, dtype=np.float64) / np.sum(ratios)
    order = np.argsort(pairs[:, 0], kind="stable")
    p = pairs[order]
    _, starts, counts = np.unique(p[:, 0], return_index=True, return_counts=True)
    n_train = np.maximum(np.floor(counts * r[0]).astype(np.int64), 1)
    n_valid = np.minimum(np.floor(counts * r[1]).astype(np.int64), counts - n_train)
    pos = np.arange(len(p)) - np.repeat(starts, counts)
    t_end, v_end = np.repeat(n_train, counts), np.repeat(n_train + n_valid, counts)
    return p[pos < t_end], p[(pos >= t_end) & (pos < v_end)], p[pos >= v_end]


def load_recbole_atomic(
    inter_path: str | os.PathLike[str],
    item_path: str | os.PathLike[str] | None = None,
    split: Literal["loo", "ratio"] = "loo",
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> InteractionData:
    """Load RecBole atomic files into an :class:`InteractionData`.

    Args:
        inter_path: the ``.inter`` file (needs ``user_id`` and ``item_id`` fields).
        item_path: optional ``.item`` file; its first category-like field (see ``CATEGORY_FIELDS``)
            becomes ``item_category`` (first token of a ``token_seq``).
        split: ``"loo"`` (leave-one-out) or ``"ratio"``.
        ratios: train/valid/test shares for ``split="ratio"``.

    Returns:
        A sequential :class:`InteractionData` named after the file stem.
    """
    inter_path = Path(inter_path)
    inter = read_atomic(inter_path)
    for needed in (USER_FIELD, ITEM_FIELD):
        if needed not in inter.columns:
            raise ValueError(f"{inter_path} lacks the {needed!r} field")
    if TIME_FIELD in inter.columns:
        inter = inter.assign(_t=inter[TIME_FIELD].astype(np.float64)).sort_values("_t", kind="stable")
    users, user_codes = np.unique(inter[USER_FIELD].to_numpy(), return_inverse=True)
    items, item_codes = np.unique(inter[ITEM_FIELD].to_numpy(), return_inverse=True)
    pairs = np.stack([user_codes, item_codes], axis=1).astype(np.int64)
    if split == "loo":
        train, valid, test = leave_one_out(pairs)
    elif split == "ratio":
        train, valid, test = ratio_split(pairs, ratios)
    else:
        raise ValueError(f"unknown split {split!r}")

    category = None
    sources = [str(inter_path)]
    if item_path is not None:
        item_frame = read_atomic(Path(item_path))
        sources.append(str(item_path))
        field = next((c for c in CATEGORY_FIELDS if c in item_frame.columns), None)
        if field is not None:
            first_token = item_frame[field].str.split(" ").str[0]
            lookup = dict(zip(item_frame[ITEM_FIELD], first_token))
            raw = np.array([lookup.get(i, "") for i in items], dtype=object)
            _, category = np.unique(raw.astype(str), return_inverse=True)
            category = category.astype(np.int64)
    return InteractionData(
        name=inter_path.stem,
        n_users=len(users),
        n_items=len(items),
        train=train,
        valid=valid,
        test=test,
        sequential=True,
        test_excludes_valid=True,
        item_category=category,
        source_files=tuple(sources),
    )
