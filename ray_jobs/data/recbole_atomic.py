"""RecBole atomic files: ``<name>.inter`` plus an optional ``<name>.item``.

Atomic files are tab-separated with a typed header such as
``user_id:token\titem_id:token\ttimestamp:float`` (RecBole docs, "Atomic Files"). Tokens are mapped
to 0-based ids in sorted token order. Interactions are ordered by timestamp within each user when a
timestamp column exists (else file order), then split either leave-one-out (last = test, second
last = valid, as SASRec) or by per-user ratio in time order (RecBole's ``RS: [0.8, 0.1, 0.1]`` with
``order: TO``), or kept as the benchmark ships them (``split: benchmark``: RecBole's
``benchmark_filename``, files ``<name>.<part>.inter``).

All of RecBole's dataset settings a benchmark needs are options (the job YAML's
``dataset.options``): the field names (``user_field``, ``item_field``, ``time_field``: RecBole's
``USER_ID_FIELD`` / ``ITEM_ID_FIELD`` / ``TIME_FIELD``), ``item_catalogue`` (every item of the
``.item`` file is rankable, even one that never occurs in an interaction), and
``test_masks_valid`` (whether validation interactions are masked, like training ones, when ranking
for test: true for leave-one-out sequential protocols, false for the bundle papers, which mask
training interactions only).

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
from ray_jobs.data.slicing import leave_one_out

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
    split: Literal["loo", "ratio", "benchmark"] = "loo",
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    benchmark_filename: tuple[str, ...] = ("train", "valid", "test"),
    user_field: str = USER_FIELD,
    item_field: str = ITEM_FIELD,
    time_field: str = TIME_FIELD,
    item_catalogue: bool = False,
    test_masks_valid: bool = True,
) -> InteractionData:
    """Load RecBole atomic files into an :class:`InteractionData`.

    Args:
        inter_path: the ``.inter`` file; for ``split="benchmark"`` the path the parts are named
            after (``<dir>/<name>.inter`` -> ``<dir>/<name>.<part>.inter``; it need not exist).
        item_path: optional ``.item`` file; its first category-like field (see ``CATEGORY_FIELDS``)
            becomes ``item_category`` (first token of a ``token_seq``).
        split: ``"loo"`` (leave-one-out), ``"ratio"``, or ``"benchmark"`` (the given files).
        ratios: train/valid/test shares for ``split="ratio"``.
        benchmark_filename: the parts for ``split="benchmark"``, in train/valid/test order; with two
            (train, test) the validation rows are each user's last training row (leave-one-out).
        user_field, item_field, time_field: the field names of the files.
        item_catalogue: rank every item of ``item_path``, not only those in the interactions.
        test_masks_valid: mask validation interactions too when ranking for test.

    Returns:
        A sequential :class:`InteractionData` named after the file stem.
    """
    inter_path = Path(inter_path)
    fields = (user_field, item_field, time_field)
    if split == "benchmark":
        if len(benchmark_filename) not in (2, 3):
            raise ValueError("benchmark_filename lists (train, test) or (train, valid, test)")
        part_paths = [inter_path.with_name(f"{inter_path.stem}.{part}.inter") for part in benchmark_filename]
        parts = [_read_inter(path, *fields) for path in part_paths]
        sources = [str(path) for path in part_paths]
    else:
        parts = [_read_inter(inter_path, *fields)]
        sources = [str(inter_path)]
    item_frame = read_atomic(Path(item_path)) if item_path is not None else None
    if item_path is not None:
        sources.append(str(item_path))
    if item_catalogue and (item_frame is None or item_field not in item_frame.columns):
        raise ValueError(f"item_catalogue needs an item_path with the {item_field!r} field")
    users = np.unique(np.concatenate([part[user_field].to_numpy() for part in parts]))
    catalogue = [part[item_field].to_numpy() for part in parts]
    if item_catalogue:
        catalogue.append(item_frame[item_field].to_numpy())
    items = np.unique(np.concatenate(catalogue))
    pairs = [np.stack([np.searchsorted(users, part[user_field].to_numpy()),
                       np.searchsorted(items, part[item_field].to_numpy())], axis=1).astype(np.int64)
             for part in parts]
    if split == "loo":
        train, valid, test = leave_one_out(pairs[0])
    elif split == "ratio":
        train, valid, test = ratio_split(pairs[0], ratios)
    elif split == "benchmark" and len(pairs) == 2:
        (train, valid), test = _last_row_as_valid(pairs[0]), pairs[1][np.argsort(pairs[1][:, 0], kind="stable")]
    elif split == "benchmark":
        train, valid, test = (part[np.argsort(part[:, 0], kind="stable")] for part in pairs)  # by user, time kept
    else:
        raise ValueError(f"unknown split {split!r}")
    return InteractionData(
        name=inter_path.stem,
        n_users=len(users),
        n_items=len(items),
        train=train,
        valid=valid,
        test=test,
        sequential=True,
        test_excludes_valid=test_masks_valid,
        item_category=_categories(item_frame, items, item_field) if item_frame is not None else None,
        source_files=tuple(sources),
    )


def _last_row_as_valid(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last row (time order) as validation, the rest training; a user with one row
    keeps it for training."""
    order = np.argsort(pairs[:, 0], kind="stable")
    p = pairs[order]
    _, starts, counts = np.unique(p[:, 0], return_index=True, return_counts=True)
    last = np.zeros(len(p), dtype=bool)
    last[(starts + counts - 1)[counts >= 2]] = True
    return p[~last], p[last]


def _read_inter(path: Path, user_field: str, item_field: str, time_field: str) -> pd.DataFrame:
    """An interaction file, each user's rows in time order when it has ``time_field``."""
    frame = read_atomic(path)
    for needed in (user_field, item_field):
        if needed not in frame.columns:
            raise ValueError(f"{path} lacks the {needed!r} field")
    if time_field in frame.columns:
        frame = frame.assign(_t=frame[time_field].astype(np.float64)).sort_values("_t", kind="stable")
    return frame


def _categories(item_frame: pd.DataFrame, items: np.ndarray, item_field: str) -> np.ndarray | None:
    """The first category-like field's first token per item (see ``CATEGORY_FIELDS``)."""
    field = next((c for c in CATEGORY_FIELDS if c in item_frame.columns), None)
    if field is None:
        return None
    first_token = item_frame[field].str.split(" ").str[0]
    lookup = dict(zip(item_frame[item_field], first_token))
    raw = np.array([lookup.get(i, "") for i in items], dtype=object)
    _, category = np.unique(raw.astype(str), return_inverse=True)
    return category.astype(np.int64)
