"""Turn a decision into the impression event of the contract (arm + propensity per slot)."""

from __future__ import annotations

import uuid
from datetime import datetime

from features.events import ImpressionEvent, ShownSlot, Surface
from serving.bandit.base import Decision

__all__ = ["decision_to_impression"]


def decision_to_impression(
    decision: Decision,
    *,
    user_id: str,
    session_id: str,
    request_id: str,
    ts: datetime,
    surface: Surface = "bundles",
    experiment: str | None = None,
    variant: str | None = None,
    event_id: uuid.UUID | None = None,
) -> ImpressionEvent:
    """The ``impression`` event that logs ``decision``; every slot carries its propensity.

    Args:
        decision: what the policy chose.
        user_id: the user shown the slate.
        session_id: the user's session.
        request_id: id that clicks and purchases are attributed to.
        ts: decision time (timezone-aware).
        surface: ``bundles`` or ``recommendations``.
        experiment: experiment name, if the request was in one.
        variant: the user's variant in that experiment.
        event_id: the event id (a fresh uuid4 when None).

    Returns:
        A validated :class:`features.events.ImpressionEvent`.
    """
    slots = [
        ShownSlot(id=arm_id, position=pos, propensity=float(p), score=float(s))
        for pos, (arm_id, p, s) in enumerate(zip(decision.arm_ids, decision.propensities, decision.scores))
    ]
    return ImpressionEvent(
        schema_version=1,
        event_id=event_id or uuid.uuid4(),
        type="impression",
        user_id=user_id,
        session_id=session_id,
        ts=ts,
        request_id=request_id,
        surface=surface,
        slots=slots,
        policy=decision.policy,
        experiment=experiment,
        variant=variant,
    )
