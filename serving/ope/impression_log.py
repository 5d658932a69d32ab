"""The logged bandit decisions and their feedback, read back from Kafka records for off-policy
evaluation.

An impression record of ``/v1/bundles`` (``serving/app/api.py``) carries, besides the contract
event (shown slots with their propensities, policy, experiment, variant), two Kafka headers: the
decision context (``serving.bandit.impressions.DecisionContext``: the user context and the shown
arms' embeddings, which the bandit learner reads) and the whole candidate set (ids, embeddings and
items) the policy chose from. Feedback is attributed by ``request_id`` and ``bundle_id`` the way the
learner does it (``serving/app/learner_state.py``): clicks and bundle purchases on the ``events``
topic, dismissals on the serving feedback topic, de-duplicated by ``event_id``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from serving.bandit.impressions import (
    CANDIDATES_HEADER,
    CONTEXT_HEADER,
    FEEDBACK_TYPES,
    DecisionContext,
    Rewards,
    decode_candidates,
)

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = ["ImpressionLog", "LoggedDecision", "LoggedFeedbackEvent", "parse_records", "read_impression_log"]

# Sort key of a record in log time: (timestamp ms, impressions before feedback, topic, partition, offset).
LogOrder = tuple[int, int, str, int, int]


class KafkaRecord(Protocol):
    """What we read of a ``kafka.consumer.fetcher.ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


@dataclass(frozen=True, eq=False)
class LoggedDecision:
    """One logged slate decision with everything needed to replay another policy on it."""

    request_id: str
    experiment: str
    variant: str
    policy: str
    context: np.ndarray  # (user_dim,)
    candidate_ids: tuple[str, ...]
    candidate_embeddings: np.ndarray  # (n_candidates, arm_dim)
    shown: tuple[str, ...]  # arm id per slot
    propensities: tuple[float, ...]  # logging policy's P(arm at slot), per slot
    shown_embeddings: dict[str, np.ndarray]  # as the learner saw them (decision context header)
    order: LogOrder
    # Candidate id -> its items (empty for impressions logged before the items were).
    candidate_items: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def candidate_index(self, slot: int) -> int:
        """Row of the arm shown at ``slot`` in the candidate set."""
        return self.candidate_ids.index(self.shown[slot])


@dataclass(frozen=True)
class LoggedFeedbackEvent:
    """A click, bundle purchase or dismissal attributed to a request's bundle."""

    request_id: str
    bundle_id: str
    kind: str
    reward: float
    order: LogOrder


@dataclass
class ImpressionLog:
    """Decisions and de-duplicated feedback, each in log order, and what was skipped and why."""

    decisions: list[LoggedDecision] = field(default_factory=list)
    feedback: list[LoggedFeedbackEvent] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def slot_rewards(self, slot: int) -> np.ndarray:
        """Per decision: the summed reward of the feedback on the bundle shown at ``slot``."""
        totals: dict[tuple[str, str], float] = {}
        for fb in self.feedback:
            key = (fb.request_id, fb.bundle_id)
            totals[key] = totals.get(key, 0.0) + fb.reward
        return np.array([totals.get((d.request_id, d.shown[slot]), 0.0) for d in self.decisions])

    def logging_policies(self) -> Counter[str]:
        """``variant (policy)`` -> number of decisions."""
        return Counter(f"{d.variant} ({d.policy})" for d in self.decisions)


def _order(record: KafkaRecord, rank: int) -> LogOrder:
    return (int(record.timestamp or 0), rank, record.topic, record.partition, record.offset)


def _decision(record: KafkaRecord, event: dict[str, Any]) -> LoggedDecision | str:
    """The decision of an impression record, or the reason it cannot be replayed."""
    headers = dict(record.headers or [])
    if CONTEXT_HEADER not in headers:
        return "impression without a bandit decision context"
    if CANDIDATES_HEADER not in headers:
        return "impression without its candidate set (logged before candidates were recorded)"
    try:
        ctx = DecisionContext.decode(headers[CONTEXT_HEADER])
        ids, embeddings, items = decode_candidates(headers[CANDIDATES_HEADER])
        slots = sorted(event["slots"], key=lambda s: s["position"])
        shown = tuple(str(s["id"]) for s in slots)
        propensities = tuple(float(s["propensity"]) for s in slots)
        decision = LoggedDecision(
            request_id=str(event["request_id"]), experiment=ctx.experiment, variant=ctx.variant,
            policy=str(event.get("policy") or "unknown"), context=np.asarray(ctx.context, dtype=np.float64),
            candidate_ids=ids, candidate_embeddings=embeddings, shown=shown, propensities=propensities,
            shown_embeddings={k: np.asarray(v, dtype=np.float64) for k, v in ctx.shown_arms.items()},
            order=_order(record, 0), candidate_items=items,
        )
    except (ValueError, KeyError, TypeError) as exc:
        return f"malformed impression ({type(exc).__name__})"
    if not set(shown) <= set(ids) or any(not 0.0 < p <= 1.0 for p in propensities):
        return "impression whose shown arms or propensities do not match its candidate set"
    return decision


def parse_records(
    records: Iterable[KafkaRecord], rewards: Rewards, experiment: str | None = None,
    variants: Iterable[str] | None = None,
) -> ImpressionLog:
    """The decisions (optionally of one experiment / some variants) and their feedback.

    Args:
        records: records of the ``events`` topic and the serving feedback topic, any order.
        rewards: reward of each feedback kind (the learner's, from ``settings.serving``).
        experiment: keep only decisions of this experiment (None: all).
        variants: keep only decisions of these variants (None: all).

    Returns:
        The log; feedback on decisions that were not kept is dropped.
    """
    wanted_variants = set(variants) if variants is not None else None
    log = ImpressionLog()
    raw_feedback: list[tuple[str, LoggedFeedbackEvent]] = []
    for record in records:
        try:
            event = json.loads(record.value) if record.value else None
        except (ValueError, UnicodeDecodeError):
            event = None
        if not isinstance(event, dict):
            log.skipped["unreadable record"] += 1
            continue
        kind = event.get("type")
        if kind == "impression":
            decision = _decision(record, event)
            if isinstance(decision, str):
                log.skipped[decision] += 1
            elif experiment is not None and decision.experiment != experiment:
                log.skipped[f"other experiment ({decision.experiment})"] += 1
            elif wanted_variants is not None and decision.variant not in wanted_variants:
                log.skipped[f"other variant ({decision.variant})"] += 1
            else:
                log.decisions.append(decision)
        elif kind in FEEDBACK_TYPES and isinstance(event.get("request_id"), str) and isinstance(event.get("bundle_id"), str):
            fb = LoggedFeedbackEvent(event["request_id"], event["bundle_id"], kind, rewards.of(kind), _order(record, 1))
            raw_feedback.append((str(event.get("event_id", "")), fb))
    log.decisions.sort(key=lambda d: d.order)
    kept = {d.request_id for d in log.decisions}
    seen: set[str] = set()
    for event_id, fb in sorted(raw_feedback, key=lambda pair: pair[1].order):
        if event_id in seen:  # the collector and POST /v1/feedback may both carry a retried event
            log.skipped["duplicate feedback (event_id)"] += 1
            continue
        seen.add(event_id)
        if fb.request_id in kept:
            log.feedback.append(fb)
        else:
            log.skipped["feedback on a decision not evaluated"] += 1
    return log


def read_impression_log(settings: Settings, experiment: str | None, variants: Iterable[str] | None = None) -> ImpressionLog:
    """:func:`parse_records` over the whole ``events`` topic and the serving feedback topic, with
    the learner's rewards (``settings.serving``)."""
    from streamrec.runtime.kafka import read_topic

    s = settings.serving
    records = [
        *read_topic(settings.kafka, settings.kafka.topics.events),
        *read_topic(settings.kafka, settings.kafka.topics.feedback),
    ]
    return parse_records(records, Rewards(s.click_reward, s.purchase_reward, s.dismiss_reward), experiment, variants)
