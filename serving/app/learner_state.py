"""The bandit learner's state as a fold over the Kafka log (Ray-free, unit-testable).

Everything the learner knows comes from records of the ``events`` topic (impressions carrying their
decision context in a header, clicks, bundle purchases, item events for popularity) and of the
serving-owned feedback topic (dismissals). So the state after a snapshot plus a replay of the log
from the snapshot's offsets equals the state of a learner that never stopped:

* offsets: the next offset to read per (topic, partition); a snapshot holds them together with the
  state they produced, so a record is applied before the snapshot or replayed after it, never both;
* ``event_id`` de-duplication (the collector and ``POST /v1/feedback`` may both carry a retried event);
* attribution only of feedback whose signed token (``serving.feedback_tokens``) verifies, names the
  request, user and a shown bundle, and falls within the attribution window (log time); each
  request is credited at most one click per shown bundle, one dismissal per shown bundle and one
  purchase. Everything else is counted by reason in ``feedback_rejected`` and queued in
  ``rejections`` for the learner to dead-letter. A purchase's revenue counts only the bought
  bundle's items, at bounded quantities and prices;
* decision contexts per ``request_id`` (bounded, TTL in log time), so feedback updates the arm that was
  shown with the context it was shown in; feedback that arrives before its impression (another
  partition) waits in ``pending`` until it shows up;
* user deletion (``forget_user``, or a tombstone record through ``apply_tombstone``): the user's
  contexts, pending feedback and request outcomes are dropped (found through ``request_users``) and
  the user's later records are skipped. Item popularity and the policies' parameters are
  aggregates with no user id and are kept.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.privacy import Tombstone
from serving.bandit import Arm, Arms, BanditPolicy, Decision, make_policy
from serving.bandit.impressions import CONTEXT_HEADER, FEEDBACK_TYPES, DecisionContext, Rewards
from serving.experiments import Experiment, RequestOutcome
from serving.recommend.bundle_features import ARM_FEATURES, USER_FEATURES
from serving.feedback_tokens import FEEDBACK_REASONS, FeedbackRejected, FeedbackSigner, check_claim

log = logging.getLogger(__name__)

_POPULARITY_WEIGHT = {"view": 1.0, "favorite": 1.0, "add_to_cart": 2.0, "click": 1.0}
_PURCHASE_WEIGHT = 4.0
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class Limits:
    context_ttl_s: float = 86_400.0
    max_contexts: int = 50_000
    max_seen_event_ids: int = 200_000
    max_outcomes: int = 200_000
    max_popular_items: int = 50_000


@dataclass(frozen=True)
class Attribution:
    """How feedback is verified and valued. Without one (``LearnerState(attribution=None)``) no
    feedback is ever credited: nothing unverifiable may move a policy or an experiment."""

    signer: FeedbackSigner
    window_s: float = 86_400.0
    max_line_quantity: int = 10
    max_item_price: float = 10_000.0


@dataclass(frozen=True)
class Rejection:
    """Feedback the fold refused, for the learner's dead-letter queue."""

    reason: str
    detail: str
    event_id: str | None
    user_id: str | None
    raw: bytes


@dataclass
class ShownContext:
    """A request's decision context as the learner keeps it, with its bookkeeping.

    Attributes:
        decision: the decision context of the impression (``CONTEXT_HEADER``).
        t: log time (ms) the impression was folded in at (its TTL counts from there).
        claims: feedback already credited to the request (``LearnerState._claim``).
    """

    decision: DecisionContext
    t: int
    claims: list[str] = field(default_factory=list)

    def to_snapshot(self) -> dict[str, Any]:
        # The header's document with the bookkeeping beside it ("t", "c"), as snapshots always held it.
        return {**self.decision.to_dict(), "t": self.t, "c": self.claims}

    @classmethod
    def from_snapshot(cls, doc: Any) -> ShownContext:
        """ValueError if malformed; reads the version-less header dicts of older snapshots too."""
        decision = DecisionContext.from_dict(doc)
        t, claims = doc.get("t"), doc.get("c", [])
        if type(t) is not int or not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
            raise ValueError(f"bookkeeping t={t!r} c={claims!r} is not (int, list of strings)")
        return cls(decision, t, list(claims))


def policy_key(experiment: str, variant: str) -> str:
    return f"{experiment} {variant}"


def _variant_fingerprint(policy: str, params: dict[str, Any], user_dim: int, arm_dim: int) -> str:
    return json.dumps([policy, params, user_dim, arm_dim], sort_keys=True, default=str)


class LearnerState:
    """Policies per (experiment, variant) and the bookkeeping that makes feedback exactly-once."""

    def __init__(
        self,
        experiments: list[Experiment],
        user_dim: int,
        arm_dim: int,
        rewards: Rewards = Rewards(),
        limits: Limits = Limits(),
        attribution: Attribution | None = None,
    ) -> None:
        self.user_dim, self.arm_dim = user_dim, arm_dim
        self.rewards, self.limits, self.attribution = rewards, limits, attribution
        # Refused feedback not yet dead-lettered (the learner drains it; bounded, not snapshotted).
        self.rejections: list[Rejection] = []
        self.experiments = {e.name: e for e in experiments}
        self.policies: dict[str, BanditPolicy] = {}
        self.fingerprints: dict[str, str] = {}
        for e in experiments:
            for v in e.variants:
                key = policy_key(e.name, v.name)
                self.policies[key] = make_policy(v.policy, user_dim, arm_dim, **v.params)
                self.fingerprints[key] = _variant_fingerprint(v.policy, v.params, user_dim, arm_dim)
        self.offsets: dict[str, int] = {}
        self.contexts: OrderedDict[str, ShownContext] = OrderedDict()
        self.pending: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.outcomes: OrderedDict[str, list[Any]] = OrderedDict()
        self.popularity: dict[str, float] = {}
        self.categories: dict[str, str] = {}
        # request_id -> user_id of impressions and feedback (what forget_user deletes by); bounded
        # like the outcomes, the longest-lived per-request entries.
        self.request_users: OrderedDict[str, str] = OrderedDict()
        # Users deleted by a tombstone (user_id -> tombstone request id): their records are skipped.
        self.deleted_users: dict[str, str] = {}
        self.log_time_ms = 0
        self.counters: dict[str, int] = {
            "records": 0,
            "bad_records": 0,
            "impressions": 0,
            "feedback_applied": 0,
            "feedback_duplicates": 0,
            "feedback_pending": 0,
            "feedback_unattributed": 0,
            "contexts_expired": 0,
            "deleted_user_records": 0,
            "users_forgotten": 0,
            **{reason: 0 for reason in FEEDBACK_REASONS},
        }
        self.variant_counts: dict[str, dict[str, float]] = {
            k: {"requests": 0, "exposures": 0, "clicks": 0, "purchases": 0, "dismissals": 0, "updates": 0,
                "reward_sum": 0.0}
            for k in self.policies
        }

    # -- decisions --------------------------------------------------------------------------

    def select(
        self, experiment: str, variant: str, context: np.ndarray, ids: list[str], embeddings: np.ndarray,
        k: int, rng: np.random.Generator,
    ) -> Decision:
        policy = self.policies.get(policy_key(experiment, variant))
        if policy is None:
            raise KeyError(f"no policy for experiment {experiment!r} variant {variant!r}")
        return policy.select(context, Arms(tuple(ids), embeddings), min(k, len(ids)), rng)

    # -- the fold ---------------------------------------------------------------------------

    def position(self, topic: str, partition: int) -> int | None:
        return self.offsets.get(f"{topic}:{partition}")

    def apply_record(
        self, topic: str, partition: int, offset: int, timestamp_ms: int, value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> list[str]:
        """Fold one record in (records at or below the tracked offset are skipped).

        Returns:
            Policy keys updated by this record (for metrics).
        """
        tp = f"{topic}:{partition}"
        if offset < self.offsets.get(tp, 0):
            return []
        self.offsets[tp] = offset + 1
        self.counters["records"] += 1
        self.log_time_ms = max(self.log_time_ms, int(timestamp_ms or 0))
        try:
            event = json.loads(value) if value else None
        except (ValueError, UnicodeDecodeError):
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.counters["bad_records"] += 1
            return []
        kind = event["type"]
        if event.get("user_id") in self.deleted_users:
            self.counters["deleted_user_records"] += 1
            return []
        if kind == "impression":
            header = dict(headers or {}).get(CONTEXT_HEADER)
            if header is not None:
                return self._impression(event, header)
            return []
        if kind in FEEDBACK_TYPES and isinstance(event.get("request_id"), str) and isinstance(event.get("bundle_id"), str):
            updated = self._feedback(event, int(timestamp_ms or 0), value or b"")
            self._popularity(event)
            return updated
        self._popularity(event)
        return []

    def _impression(self, event: dict[str, Any], header: bytes) -> list[str]:
        try:
            decision = DecisionContext.decode(header)
            request_id = event["request_id"]
        except (ValueError, KeyError):
            self.counters["bad_records"] += 1
            return []
        key = policy_key(decision.experiment, decision.variant)
        self.counters["impressions"] += 1
        self._remember_user(request_id, event.get("user_id"))
        ctx = ShownContext(decision, self.log_time_ms)
        self.contexts[request_id] = ctx
        self.contexts.move_to_end(request_id)
        if key in self.variant_counts:
            self.variant_counts[key]["requests"] += 1
        self.outcomes[request_id] = [decision.experiment, decision.variant, False, False, 0.0]
        while len(self.outcomes) > self.limits.max_outcomes:
            self.outcomes.popitem(last=False)
        self._expire()
        updated = self._expose(key, ctx)
        for feedback in self.pending.pop(request_id, []):
            self.counters["feedback_pending"] -= 1
            updated += self._attribute(feedback, ctx)
        return updated

    def _expose(self, key: str, ctx: ShownContext) -> list[str]:
        """Every shown bundle is one observation of its variant's policy, reward 0 until its
        feedback credits it: the policy learns from what was shown and ignored, not from clicks alone."""
        policy = self.policies.get(key)
        if policy is None:
            return []
        shown = ctx.decision.shown_arms
        context = np.asarray(ctx.decision.context, dtype=np.float64)
        try:
            for bundle_id, vector in shown.items():
                policy.expose(Arm(bundle_id, np.asarray(vector, dtype=np.float64)), context)
        except ValueError:  # a context of other dimensions (logged before a feature change): not learnable
            self.counters["bad_records"] += 1
            return []
        counts = self.variant_counts[key]
        counts["exposures"] = counts.get("exposures", 0) + len(shown)  # absent in older snapshots
        return [key]

    def _reject(self, exc: FeedbackRejected, event: dict[str, Any], raw: bytes) -> list[str]:
        self.counters[exc.reason] += 1
        if exc.reason == "feedback_unsigned":  # an organic click (no slate token): valid, just not credited
            return []
        event_id, user_id = event.get("event_id"), event.get("user_id")
        self.rejections.append(Rejection(exc.reason, exc.detail, event_id if isinstance(event_id, str) else None,
                                         user_id if isinstance(user_id, str) else None, raw))
        del self.rejections[: -self.limits.max_contexts]
        return []

    def _verify(self, event: dict[str, Any], at_ms: int) -> None:
        """The token's stateless checks (``check_claim``); replays are caught in ``_attribute``."""
        if self.attribution is None:
            raise FeedbackRejected("feedback_forged", "this learner has no signing key: nothing is credited")
        claim = self.attribution.signer.verify(event.get("feedback_token"))
        user_id = event.get("user_id")
        check_claim(claim, request_id=event["request_id"], user_id=user_id if isinstance(user_id, str) else "",
                    bundle_id=event["bundle_id"], at_ms=at_ms, window_s=self.attribution.window_s)

    def _feedback(self, event: dict[str, Any], at_ms: int, raw: bytes) -> list[str]:
        event_id = str(event.get("event_id", ""))
        if event_id in self.seen:
            self.counters["feedback_duplicates"] += 1
            return []
        self.seen[event_id] = None
        while len(self.seen) > self.limits.max_seen_event_ids:
            self.seen.popitem(last=False)
        try:
            self._verify(event, at_ms)
        except FeedbackRejected as exc:
            return self._reject(exc, event, raw)
        self._remember_user(event["request_id"], event.get("user_id"))
        event = {k: event[k] for k in ("type", "request_id", "bundle_id", "items", "event_id", "user_id") if k in event}
        event["t"] = self.log_time_ms
        ctx = self.contexts.get(event["request_id"])
        if ctx is None:
            self.pending.setdefault(event["request_id"], []).append(event)
            self.counters["feedback_pending"] += 1
            self._expire()
            return []
        return self._attribute(event, ctx)

    def _claim(self, event: dict[str, Any], ctx: ShownContext) -> bool:
        """First of its kind for the request (one click and one dismissal per shown bundle, one
        purchase)? The claims live beside the decision context, so snapshots keep them."""
        kind = event["type"]
        claim = "bundle_purchase" if kind == "bundle_purchase" else f"{kind}:{event['bundle_id']}"
        if claim in ctx.claims:
            return False
        ctx.claims.append(claim)
        return True

    def _revenue(self, event: dict[str, Any], ctx: ShownContext) -> float:
        """Lines of the bought bundle's items only, quantity and unit price bounded."""
        bundle_items = set(ctx.decision.shown_items.get(event["bundle_id"], ()))
        bounds = self.attribution
        assert bounds is not None  # feedback reaches here only once its token verified
        total = 0.0
        for line in event.get("items", []):
            if not isinstance(line, dict) or line.get("item_id") not in bundle_items:
                continue
            try:
                price = min(max(float(line.get("price") or 0.0), 0.0), bounds.max_item_price)
                quantity = min(max(int(line.get("quantity", 1)), 0), bounds.max_line_quantity)
            except (TypeError, ValueError):
                continue
            total += price * quantity if math.isfinite(price) else 0.0
        return total

    def _attribute(self, event: dict[str, Any], ctx: ShownContext) -> list[str]:
        key = policy_key(ctx.decision.experiment, ctx.decision.variant)
        policy = self.policies.get(key)
        embedding = ctx.decision.shown_arms.get(event["bundle_id"])
        if policy is None or embedding is None:
            # A variant no longer configured, or a bundle that was not shown in that request.
            self.counters["feedback_unattributed"] += 1
            return []
        if not self._claim(event, ctx):
            raw = json.dumps({k: v for k, v in event.items() if k != "t"}).encode()
            what = "purchase of this request" if event["type"] == "bundle_purchase" else f"{event['type']} of this bundle"
            return self._reject(FeedbackRejected("feedback_replayed", f"a second {what}"), event, raw)
        kind = event["type"]
        reward = self.rewards.of(kind)
        try:
            policy.credit(Arm(event["bundle_id"], np.asarray(embedding, dtype=np.float64)),
                          np.asarray(ctx.decision.context, dtype=np.float64), reward)
        except ValueError:  # a context of other dimensions (logged before a feature change)
            self.counters["feedback_unattributed"] += 1
            return []
        self.counters["feedback_applied"] += 1
        counts = self.variant_counts[key]
        counts["updates"] += 1
        counts["reward_sum"] += reward
        outcome = self.outcomes.get(event["request_id"])
        if kind == "click":
            counts["clicks"] += 1
            if outcome is not None:
                outcome[2] = True
        elif kind == "bundle_purchase":
            counts["purchases"] += 1
            if outcome is not None:
                outcome[3] = True
                outcome[4] += self._revenue(event, ctx)
        else:
            counts["dismissals"] += 1
        return [key]

    def _expire(self) -> None:
        horizon = self.log_time_ms - self.limits.context_ttl_s * 1000
        while self.contexts:
            request_id, ctx = next(iter(self.contexts.items()))
            if ctx.t >= horizon and len(self.contexts) <= self.limits.max_contexts:
                break
            self.contexts.popitem(last=False)
            self.counters["contexts_expired"] += 1
        while self.pending:
            request_id, waiting = next(iter(self.pending.items()))
            if waiting[0]["t"] >= horizon and self.counters["feedback_pending"] <= self.limits.max_contexts:
                break
            self.pending.popitem(last=False)
            self.counters["feedback_pending"] -= len(waiting)
            self.counters["feedback_unattributed"] += len(waiting)

    def _remember_user(self, request_id: str, user_id: Any) -> None:
        if not isinstance(user_id, str):
            return
        self.request_users[request_id] = user_id
        self.request_users.move_to_end(request_id)
        while len(self.request_users) > self.limits.max_outcomes:
            self.request_users.popitem(last=False)

    # -- user deletion ------------------------------------------------------------------------

    def forget_user(self, user_id: str, request_id: str = "") -> dict[str, int]:
        """Drop the user's decision contexts, pending feedback and outcomes; skip their later records.

        Returns:
            Entries removed per kind (zeros when the user was already forgotten).
        """
        requests = [r for r, u in self.request_users.items() if u == user_id]
        removed = {"contexts": 0, "pending": 0, "outcomes": 0, "requests": len(requests)}
        for r in requests:
            del self.request_users[r]
            removed["contexts"] += self.contexts.pop(r, None) is not None
            removed["outcomes"] += self.outcomes.pop(r, None) is not None
            waiting = self.pending.pop(r, [])
            removed["pending"] += len(waiting)
            self.counters["feedback_pending"] -= len(waiting)
        if user_id not in self.deleted_users:
            self.counters["users_forgotten"] += 1
        self.deleted_users[user_id] = request_id
        return removed

    def apply_tombstone(self, topic: str, partition: int, offset: int, value: bytes | None) -> dict[str, int] | None:
        """Fold one record of the tombstone topic in (forget its user); None when skipped."""
        tp = f"{topic}:{partition}"
        if offset < self.offsets.get(tp, 0):
            return None
        self.offsets[tp] = offset + 1
        try:
            tombstone = Tombstone.from_json(value or b"")
        except ValueError:
            self.counters["bad_records"] += 1
            return None
        return self.forget_user(tombstone.user_id, tombstone.request_id)

    def _popularity(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in _POPULARITY_WEIGHT and isinstance(event.get("item_id"), str):
            self._bump(event["item_id"], _POPULARITY_WEIGHT[kind], event.get("category_id"))
        elif kind in ("purchase", "bundle_purchase") and isinstance(event.get("items"), list):
            for line in event["items"]:
                if isinstance(line, dict) and isinstance(line.get("item_id"), str):
                    self._bump(line["item_id"], _PURCHASE_WEIGHT, line.get("category_id"))

    def _bump(self, item: str, weight: float, category: Any) -> None:
        self.popularity[item] = self.popularity.get(item, 0.0) + weight
        if isinstance(category, str):
            self.categories[item] = category
        if len(self.popularity) > self.limits.max_popular_items:
            keep = sorted(self.popularity.items(), key=lambda kv: (-kv[1], kv[0]))[: self.limits.max_popular_items * 9 // 10]
            self.popularity = dict(keep)
            self.categories = {i: c for i, c in self.categories.items() if i in self.popularity}

    # -- reads ------------------------------------------------------------------------------

    def popular_items(self, n: int) -> list[tuple[str, float, str | None]]:
        # a partial selection: the fold holds up to max_popular_items and requests want a few hundred
        top = heapq.nsmallest(n, self.popularity.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(item, score, self.categories.get(item)) for item, score in top]

    def request_outcomes(self, experiment: str) -> list[RequestOutcome]:
        return [
            RequestOutcome(v, bool(c), bool(p), float(r), self.request_users.get(request_id))
            for request_id, (e, v, c, p, r) in self.outcomes.items()
            if e == experiment and v in {x.name for x in self.experiments[experiment].variants}
        ]

    def feature_weights(self) -> dict[str, dict[str, Any]]:
        """Per policy key with shared linear weights: the weight it learned on each named user and
        arm feature (``serving.recommend.bundle_features``), i.e. which signal it trusts."""
        # Named as served; positional for other dimensions (a learner built for tests or replays).
        user_names = USER_FEATURES if self.user_dim == len(USER_FEATURES) else [f"user_{i}" for i in range(self.user_dim)]
        arm_names = ARM_FEATURES if self.arm_dim == len(ARM_FEATURES) else [f"arm_{i}" for i in range(self.arm_dim)]
        out: dict[str, dict[str, Any]] = {}
        for key, policy in self.policies.items():
            weights = policy.learned_weights()
            if weights is None:
                continue
            out[key] = {
                "arm": {name: round(float(w), 6) for name, w in zip(arm_names, weights.arm)},
                "user": {name: round(float(w), 6) for name, w in zip(user_names, weights.user)},
                "bias": round(weights.bias, 6),
            }
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "feature_weights": self.feature_weights(),
            "counters": dict(self.counters),
            "variants": {k: dict(v) for k, v in self.variant_counts.items()},
            "policy_updates": {k: p.n_updates for k, p in self.policies.items()},
            "offsets": dict(self.offsets),
            "contexts": len(self.contexts),
            "log_time_ms": self.log_time_ms,
        }

    # -- snapshots --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        meta = {
            "version": SNAPSHOT_VERSION,
            "offsets": self.offsets,
            "contexts": [(r, ctx.to_snapshot()) for r, ctx in self.contexts.items()],
            "pending": list(self.pending.items()),
            "seen": list(self.seen),
            "outcomes": list(self.outcomes.items()),
            "popularity": self.popularity,
            "categories": self.categories,
            "counters": self.counters,
            "variant_counts": self.variant_counts,
            "fingerprints": self.fingerprints,
            "log_time_ms": self.log_time_ms,
            "request_users": list(self.request_users.items()),
            "deleted_users": self.deleted_users,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for key, policy in self.policies.items():
            for name, value in policy.state_dict().items():
                arrays[f"policy|{key}|{name}"] = value
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def load_bytes(self, data: bytes) -> list[str]:
        """Restore a snapshot. Variants whose policy definition changed start afresh.

        Returns:
            Policy keys that were NOT restored (new or changed variants).
        """
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k].copy() for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        if meta.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {meta.get('version')} is not {SNAPSHOT_VERSION}")
        fresh: list[str] = []
        for key, policy in self.policies.items():
            state = {n.split("|", 2)[2]: v for n, v in arrays.items() if n.startswith(f"policy|{key}|")}
            if state and meta["fingerprints"].get(key) == self.fingerprints[key]:
                policy.load_state_dict(state)
                self.variant_counts[key] = meta["variant_counts"].get(key, self.variant_counts[key])
            else:
                fresh.append(key)
        self.offsets = {k: int(v) for k, v in meta["offsets"].items()}
        self.contexts = OrderedDict()
        for request_id, doc in meta["contexts"]:
            try:
                self.contexts[request_id] = ShownContext.from_snapshot(doc)
            except ValueError as exc:  # e.g. a non-finite feature an older learner took in: not creditable
                log.warning("snapshot context of request %s dropped: %s", request_id, exc)
        self.pending = OrderedDict((k, v) for k, v in meta["pending"])
        self.seen = OrderedDict((k, None) for k in meta["seen"])
        self.outcomes = OrderedDict((k, v) for k, v in meta["outcomes"])
        self.popularity = {k: float(v) for k, v in meta["popularity"].items()}
        self.categories = dict(meta["categories"])
        self.counters.update(meta["counters"])
        self.log_time_ms = int(meta["log_time_ms"])
        # Absent in snapshots written before user deletion existed.
        self.request_users = OrderedDict((k, v) for k, v in meta.get("request_users", []))
        self.deleted_users = dict(meta.get("deleted_users", {}))
        return fresh
