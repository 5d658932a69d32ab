"""Early stopping on a validation metric (higher is better), with state for checkpoints.

Example:
    >>> stop = EarlyStopping(patience=2)
    >>> [stop.update(v, epoch=e) for e, v in enumerate([0.1, 0.2, 0.15, 0.19])]
    [True, True, False, False]
    >>> stop.should_stop, stop.best_epoch
    (True, 1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """Tracks the best value; stops after ``patience`` evaluations without improvement.

    Attributes:
        patience: evaluations without improvement tolerated.
        best: best value seen (``-inf`` before any).
        best_epoch: epoch of ``best`` (-1 before any).
        bad_evals: evaluations since the last improvement.
    """

    patience: int
    best: float = float("-inf")
    best_epoch: int = -1
    bad_evals: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record a validation value; return whether it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_evals = value, epoch, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, float | int]) -> "EarlyStopping":
        return cls(**state)  # type: ignore[arg-type]
