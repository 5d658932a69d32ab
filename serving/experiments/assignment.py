"""Sticky assignment: a user's variant is a pure function of (salt, user id).

sha256 (not ``hash()``, which is salted per process) makes the bucket identical in every replica
and after restarts; no assignment table is needed.
"""

from __future__ import annotations

import hashlib
import math

from serving.experiments.definitions import Experiment

__all__ = ["assign_variant", "bucket"]

_SCALE = float(2**64)


def bucket(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) from sha256(salt, user id).

    Args:
        salt: the experiment salt.
        user_id: the user.

    Returns:
        The user's position in [0, 1).
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")
    if not isinstance(salt, str) or not salt:
        raise ValueError("salt must be a non-empty string")
    # Length-prefix the salt so ("ab", "c") and ("a", "bc") hash differently.
    payload = f"{len(salt)}:{salt}:{user_id}".encode("utf-8")
    digest = hashlib.sha256(payload).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_variant(experiment: Experiment, user_id: str) -> str:
    """The variant of ``user_id`` in ``experiment`` (stable across processes and restarts).

    Args:
        experiment: the experiment.
        user_id: the user.

    Returns:
        The variant name; shares are consecutive intervals of [0, 1) in declaration order.
    """
    u = bucket(experiment.salt, user_id)
    edge = 0.0
    for variant in experiment.variants:
        edge = math.fsum((edge, variant.share))
        if u < edge:
            return variant.name
    return experiment.variants[-1].name  # u within float rounding of 1.0
