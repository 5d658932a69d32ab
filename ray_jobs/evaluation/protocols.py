"""Evaluation protocols and the report every evaluation returns.

A metric value means nothing without the protocol that produced it (full ranking and sampled
ranking differ by an order of magnitude), so every report carries a human-readable protocol string.

Example:
    >>> r = EvalReport(protocol=FULL_RANKING, split="test", n_users=2, metrics={"recall@20": 0.1})
    >>> print(r.describe())
    test (full ranking over all items not in the user's training interactions; 2 users): recall@20=0.1000
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FULL_RANKING", "SAMPLED_LOO", "EvalReport", "metric_key"]

FULL_RANKING = "full ranking over all items not in the user's training interactions"
SAMPLED_LOO = "leave-one-out, 1 held-out item vs 100 sampled negatives"


def metric_key(name: str, k: int) -> str:
    """Canonical metric column name, e.g. ``metric_key("recall", 20) == "recall@20"``."""
    return f"{name}@{k}"


@dataclass(frozen=True)
class EvalReport:
    """Averaged metrics of one evaluation run.

    Attributes:
        protocol: what was ranked against what (one of the module constants, possibly extended).
        split: which held-out split was scored ("valid" or "test").
        n_users: number of users that contributed (users without held-out items are skipped).
        metrics: metric key (see :func:`metric_key`) to mean value over users.
    """

    protocol: str
    split: str
    n_users: int
    metrics: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        vals = ", ".join(f"{k}={v:.4f}" for k, v in sorted(self.metrics.items()))
        return f"{self.split} ({self.protocol}; {self.n_users} users): {vals}"

    def flat(self) -> dict[str, float | str | int]:
        """Metrics prefixed by split plus the protocol, ready for ``ray.train.report``."""
        out: dict[str, float | str | int] = {f"{self.split}/{k}": v for k, v in self.metrics.items()}
        out[f"{self.split}/protocol"] = self.protocol
        out[f"{self.split}/n_users"] = self.n_users
        return out
