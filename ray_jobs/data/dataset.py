"""The typed dataset object every adapter returns.

Example:
    >>> import numpy as np
    >>> d = InteractionData(name="toy", n_users=2, n_items=3,
    ...                     train=np.array([[0, 0], [1, 1]]), valid=np.zeros((0, 2), np.int64),
    ...                     test=np.array([[0, 2]]))
    >>> d.item_counts().tolist()
    [1, 1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InteractionData", "BundleGraphs", "USER_COL", "ITEM_COL", "empty_pairs", "user_histories"]

# Column order of every interaction array: (user, item). For bundle data "item" is the bundle.
USER_COL = 0
ITEM_COL = 1


def empty_pairs() -> np.ndarray:
    """A ``(0, 2)`` int64 interaction array."""
    return np.zeros((0, 2), dtype=np.int64)


def user_histories(pairs: np.ndarray, n_users: int) -> list[np.ndarray]:
    """Per user, their items in row order (chronological for sequential data; for session data
    each "user" is a session)."""
    order = np.argsort(pairs[:, USER_COL], kind="stable")
    counts = np.bincount(pairs[:, USER_COL], minlength=n_users)
    return np.split(pairs[order, ITEM_COL], np.cumsum(counts)[:-1])


def _check_pairs(name: str, pairs: np.ndarray, n_rows: int, n_cols: int) -> None:
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype != np.int64:
        raise ValueError(f"{name} must be an (n, 2) int64 array, got {pairs.dtype} {pairs.shape}")
    if len(pairs) and (pairs.min(axis=0) < 0).any():
        raise ValueError(f"{name} has negative ids")
    if len(pairs) and (pairs[:, 0].max() >= n_rows or pairs[:, 1].max() >= n_cols):
        raise ValueError(f"{name} ids exceed ({n_rows}, {n_cols})")


@dataclass(frozen=True)
class BundleGraphs:
    """Item-level side information of a bundle dataset (CrossCBR's U-I and B-I graphs).

    Attributes:
        n_atomic_items: number of items that bundles are made of.
        user_item: ``(n, 2)`` user-item interactions.
        bundle_item: ``(n, 2)`` bundle membership, ``(bundle, item)``.
        item_ids: optional raw ids of the atomic items, ``(n_atomic_items,)``; with them the registry
            ships each bundle's item list (``bundle_items``) so that serving can show the bundle.
    """

    n_atomic_items: int
    user_item: np.ndarray
    bundle_item: np.ndarray
    item_ids: np.ndarray | None = None

    def items_of_bundles(self, n_bundles: int) -> list[list[str]]:
        """Raw item ids of each bundle ``0..n_bundles-1``, sorted (needs ``item_ids``)."""
        if self.item_ids is None:
            raise ValueError("the bundle graphs have no raw item ids")
        out: list[list[str]] = [[] for _ in range(n_bundles)]
        for b, i in self.bundle_item.tolist():
            out[b].append(str(self.item_ids[i]))
        return [sorted(items) for items in out]


@dataclass(frozen=True)
class InteractionData:
    """Train/valid/test interactions with 0-based contiguous ids.

    Attributes:
        name: dataset name, used in logs and the registry.
        n_users: users are ``0..n_users-1``.
        n_items: recommendable items (bundles for bundle data) are ``0..n_items-1``.
        train, valid, test: ``(n, 2)`` int64 ``(user, item)`` arrays. When ``sequential`` is true the
            rows of each user appear in chronological order in ``train``.
        sequential: whether the order of ``train`` rows within a user is meaningful (SASRec).
        test_excludes_valid: whether validation items are masked, like training items, when ranking
            for the test split (true when ``valid`` was carved out of the original training split).
        item_category: optional ``(n_items,)`` integer category per item.
        bundles: item-level graphs for bundle datasets, else ``None``.
        source_files: the raw files read, for the registry's data snapshot id.
        source_snapshot: what a source that is not a fixed set of files read (the event lake's
            ``LakeSnapshot.as_dict()``); its ``"id"`` replaces the hash of ``source_files`` as the
            registry's data snapshot id and the whole dict goes into the manifest.
        user_ids, item_ids: optional raw (source) ids of the rows, ``(n_users,)`` / ``(n_items,)``;
            registered with the embeddings so that serving can map its string ids to rows.
        held_out_cases: for session benchmarks whose files give their test (and validation) cases
            row by row, those cases (split -> ``ray_jobs.evaluation.session.SessionCases``): the
            session protocol evaluates exactly them instead of every prefix of the split's sessions.
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    sequential: bool = False
    test_excludes_valid: bool = True
    item_category: np.ndarray | None = None
    bundles: BundleGraphs | None = None
    source_files: tuple[str, ...] = field(default_factory=tuple)
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    source_snapshot: dict[str, Any] | None = None
    held_out_cases: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.n_users <= 0 or self.n_items <= 0:
            raise ValueError("n_users and n_items must be positive")
        if self.user_ids is not None and len(self.user_ids) != self.n_users:
            raise ValueError("user_ids must have n_users entries")
        if self.item_ids is not None and len(self.item_ids) != self.n_items:
            raise ValueError("item_ids must have n_items entries")
        for split in ("train", "valid", "test"):
            _check_pairs(split, getattr(self, split), self.n_users, self.n_items)
        if self.item_category is not None and self.item_category.shape != (self.n_items,):
            raise ValueError("item_category must have shape (n_items,)")
        if self.bundles is not None:
            b = self.bundles
            _check_pairs("user_item", b.user_item, self.n_users, b.n_atomic_items)
            _check_pairs("bundle_item", b.bundle_item, self.n_items, b.n_atomic_items)
            if b.item_ids is not None and len(b.item_ids) != b.n_atomic_items:
                raise ValueError("bundles.item_ids must have n_atomic_items entries")

    def item_counts(self) -> np.ndarray:
        """Training interactions per item, ``(n_items,)``."""
        return np.bincount(self.train[:, ITEM_COL], minlength=self.n_items)

    def seen_for(self, split: str) -> np.ndarray:
        """Interactions to mask when ranking for ``split`` ("valid" or "test")."""
        if split == "valid" or not self.test_excludes_valid:
            return self.train
        return np.concatenate([self.train, self.valid])

    def summary(self) -> str:
        return (
            f"{self.name}: {self.n_users} users, {self.n_items} items, train {len(self.train)}, "
            f"valid {len(self.valid)}, test {len(self.test)}"
        )
