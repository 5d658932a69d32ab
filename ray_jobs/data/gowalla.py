"""Gowalla with the LightGCN/NGCF split (``gowalla_lightgcn/train.txt``, ``test.txt``).

Each line is ``user item item ...`` with 0-based ids. The published protocol (He et al., SIGIR 2020)
ranks all items not in the user's training set. We carve a seeded validation split out of the
training lines for early stopping, and mask it like training items at test time.

Example:
    >>> data = load_gowalla(valid_fraction=0.1, valid_seed=0)
    >>> data.n_users, data.n_items
    (29858, 40981)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.paths import resolve_datasets_dir

__all__ = ["load_gowalla", "read_user_lines", "carve_validation"]

SUBDIR = "gowalla_lightgcn"


def read_user_lines(path: Path) -> np.ndarray:
    """Parse a LightGCN ``user item item ...`` file into ``(n, 2)`` int64 pairs, in file order."""
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    with open(path) as f:
        for line in f:
            ids = np.array(line.split(), dtype=np.int64)
            if len(ids) < 2:
                continue  # a user with no items on this side of the split
            users.append(np.full(len(ids) - 1, ids[0], dtype=np.int64))
            items.append(ids[1:])
    return np.stack([np.concatenate(users), np.concatenate(items)], axis=1)


def carve_validation(
    train: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * n_u)`` random training items per user (keeping at least one).

    Args:
        train: ``(n, 2)`` pairs.
        fraction: share of each user's items to hold out, in ``[0, 1)``.
        seed: RNG seed, so the split is the same on every worker and run.

    Returns:
        ``(train, valid)`` pair arrays, both sorted by user.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError("fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(train)), train[:, 0]))  # shuffle within each user
    shuffled = train[order]
    users, starts, counts = np.unique(shuffled[:, 0], return_index=True, return_counts=True)
    n_valid = np.minimum(np.rint(counts * fraction).astype(np.int64), counts - 1)
    pos_in_user = np.arange(len(shuffled)) - np.repeat(starts, counts)
    is_valid = pos_in_user < np.repeat(n_valid, counts)
    return shuffled[~is_valid], shuffled[is_valid]


def load_gowalla(
    datasets_dir: str | os.PathLike[str] | None = None,
    valid_fraction: float = 0.1,
    valid_seed: int = 2020,
) -> InteractionData:
    """Load the LightGCN Gowalla split with a validation split carved from train.

    Args:
        datasets_dir: folder holding ``gowalla_lightgcn/`` (see :mod:`ray_jobs.data.paths`).
        valid_fraction: share of each user's training items held out for validation (0 disables).
        valid_seed: seed of the validation carve-out.

    Returns:
        An :class:`InteractionData` with 29,858 users and 40,981 items.
    """
    root = resolve_datasets_dir(datasets_dir) / SUBDIR
    train_path, test_path = root / "train.txt", root / "test.txt"
    full_train = read_user_lines(train_path)
    test = read_user_lines(test_path)
    train, valid = carve_validation(full_train, valid_fraction, valid_seed)
    n_users = int(max(full_train[:, 0].max(), test[:, 0].max())) + 1
    n_items = int(max(full_train[:, 1].max(), test[:, 1].max())) + 1
    return InteractionData(
        name="gowalla",
        n_users=n_users,
        n_items=n_items,
        train=train,
        valid=valid,
        test=test,
        test_excludes_valid=True,
        source_files=(str(train_path), str(test_path)),
    )
