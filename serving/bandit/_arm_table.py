"""Per-arm parameter storage for a changing set of arms.

Rows live in growable numpy arrays so a request's candidates are gathered in one fancy-index;
an arm never updated has no row and reads as the prior (so selecting never mutates state).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.bandit.base import stack_ids


class ArmTable:
    """Named per-arm arrays with a prior for unseen arms.

    Args:
        priors: name -> array of the per-arm shape, the value an unseen arm starts from.
    """

    def __init__(self, priors: dict[str, np.ndarray]) -> None:
        self.priors = {k: np.asarray(v, dtype=np.float64) for k, v in priors.items()}
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.arrays = {k: np.empty((0, *v.shape)) for k, v in self.priors.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, arm_id: str) -> int:
        """Row of ``arm_id``, inserted with the prior when new."""
        row = self.index.get(arm_id)
        if row is not None:
            return row
        row = len(self.ids)
        if row == self.arrays[next(iter(self.arrays))].shape[0]:
            self._grow(max(8, 2 * row))
        for key, prior in self.priors.items():
            self.arrays[key][row] = prior
        self.ids.append(arm_id)
        self.index[arm_id] = row
        return row

    def gather(self, arm_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Parameters of ``arm_ids`` stacked along axis 0 (prior where unseen; copies)."""
        rows = np.fromiter((self.index.get(a, -1) for a in arm_ids), dtype=np.int64, count=len(arm_ids))
        known = rows >= 0
        out = {}
        for key, prior in self.priors.items():
            values = np.broadcast_to(prior, (len(arm_ids), *prior.shape)).copy()
            if known.any():
                values[known] = self.arrays[key][rows[known]]
            out[key] = values
        return out

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays trimmed to the used rows, keys prefixed, plus the ids."""
        n = len(self.ids)
        state = {f"{prefix}ids": stack_ids(self.ids)}
        for key, arr in self.arrays.items():
            state[f"{prefix}{key}"] = arr[:n].copy()
        return state

    def load(self, prefix: str, state: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`state`; checks shapes against the priors."""
        key_ids = f"{prefix}ids"
        if key_ids not in state:
            raise ValueError(f"state is missing {key_ids!r}")
        ids = [str(a) for a in np.asarray(state[key_ids]).reshape(-1)]
        if len(set(ids)) != len(ids):
            raise ValueError("state has duplicate arm ids")
        arrays = {}
        for key, prior in self.priors.items():
            arr = np.asarray(state.get(f"{prefix}{key}"), dtype=np.float64)
            if arr.shape != (len(ids), *prior.shape):
                raise ValueError(f"state array {prefix}{key} has shape {arr.shape}, expected {(len(ids), *prior.shape)}")
            arrays[key] = arr.copy()
        self.ids = ids
        self.index = {a: i for i, a in enumerate(ids)}
        self.arrays = arrays

    def _grow(self, capacity: int) -> None:
        for key, arr in self.arrays.items():
            bigger = np.empty((capacity, *arr.shape[1:]))
            bigger[: arr.shape[0]] = arr
            self.arrays[key] = bigger
