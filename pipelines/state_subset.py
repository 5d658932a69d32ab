"""Passing a micro-batch only the state it can change, and merging the result back.

A batch touches few keys, but the state covers every key ever seen; sending all of it through
the runner each batch makes a batch cost grow with history instead of with its size. The driver
parses the batch's records once (cheap next to the Beam run) and selects, per family:

* users / items: the keys the batch names, plus those an event of which leaves the short or long
  window as the as-of time advances (``window_changed``: their counts change without a new event);
* sessions, co-occurrence: the sessions of the batch's cart/purchase lines and every item in them;
* bundles, requests: the keys the batch names; experiment variants: all (a handful);
* seen ids: the batch's event ids.

``merge_state`` puts the returned states back (a key passed in and not returned was dropped) and
prunes what was not passed: remembered ids and sessions/requests past their retention, windowed
events that left the long window.
"""

from __future__ import annotations

from typing import Any, Iterable

from features.events import EventRejected
from pipelines.accumulators import (
    COOCCURRENCE_TYPES,
    FeatureSpec,
    LatenessPolicy,
    bundle_signals,
    event_seconds,
    interactions,
    item_signals,
)
from pipelines.records import KafkaRecord
from pipelines.state_store import FAMILIES, PipelineState
from pipelines.transforms import parse_record

_ATTRIBUTED = ("impression", "click", "bundle_purchase")


def relevant_state(state: PipelineState, records: Iterable[KafkaRecord], spec: FeatureSpec) -> PipelineState:
    """The part of ``state`` the batch of ``records`` can read or change."""
    policy = LatenessPolicy(spec.allowed_lateness_s)
    events = []
    for record in records:
        if record.offset < state.offsets.get(record.partition, 0):
            continue
        try:
            event = parse_record(record).event
        except EventRejected:
            continue
        if not policy.is_late(event_seconds(event), state.watermark):
            events.append(event)
    times = [event_seconds(e) for e in events]
    as_of = max([t for t in [state.watermark, *times] if t is not None], default=None)

    users = {e.user_id for e in events}
    items = {item for e in events for item, _, _ in item_signals(e)}
    sessions = {e.session_id for e in events if e.type in COOCCURRENCE_TYPES}
    cooc = {item for e in events if e.type in COOCCURRENCE_TYPES for item, _, _, _ in interactions(e)}
    cooc |= {item for s in sessions if s in state.sessions for item in state.sessions[s].items}
    bundles = {b for e in events for b, _ in bundle_signals(e)}
    requests = {e.request_id for e in events if e.type in _ATTRIBUTED}
    ids = {str(e.event_id) for e in events}
    previous = state.watermark

    def pick(family: dict[str, Any], keys: set[str]) -> dict[str, Any]:
        return {k: family[k] for k in keys if k in family}

    def changing(family: dict[str, Any], keys: set[str]) -> dict[str, Any]:
        return {
            k: v for k, v in family.items()
            if k in keys or (as_of is not None and v.window_changed(previous, as_of, spec))
        }

    return PipelineState(
        watermark=state.watermark,
        offsets=dict(state.offsets),
        batches=state.batches,
        seen=pick(state.seen, ids),
        users=changing(state.users, users),
        items=changing(state.items, items),
        sessions=pick(state.sessions, sessions),
        cooccurrence=pick(state.cooccurrence, cooc),
        bundles=pick(state.bundles, bundles),
        requests=pick(state.requests, requests),
        variants=dict(state.variants),
    )


def merge_state(full: PipelineState, passed: PipelineState, new: PipelineState, spec: FeatureSpec) -> PipelineState:
    """``full`` with the keys of ``passed`` replaced by ``new``'s, then pruned as of ``new.watermark``."""
    merged = PipelineState(watermark=new.watermark, offsets=dict(new.offsets), batches=new.batches)
    for family in FAMILIES:
        values = dict(getattr(full, family))
        for key in getattr(passed, family):
            values.pop(key, None)
        values.update(getattr(new, family))
        setattr(merged, family, values)
    as_of = new.watermark
    if as_of is None:
        return merged
    merged.seen = {k: ts for k, ts in merged.seen.items() if ts >= as_of - spec.allowed_lateness_s}
    retention = spec.state_retention_s
    merged.sessions = {k: s for k, s in merged.sessions.items() if s.last_ts >= as_of - retention}
    merged.requests = {k: r for k, r in merged.requests.items() if r.last_ts >= as_of - retention}
    for key, user in merged.users.items():
        if key not in new.users:
            user.prune(as_of, spec)
    for key in [k for k in merged.items if k not in new.items]:
        item = merged.items[key]
        item.prune(as_of, spec)
        if not (item.recent or item.rec_impressions or item.rec_clicks):
            del merged.items[key]
    return merged
