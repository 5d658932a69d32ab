"""The driver's state selection reads records without the contract's parse: it must name every key
the contract's events touch (a superset is harmless), and fall back to the contract where it
cannot read a record."""

from __future__ import annotations

import json

from pipeline_support import T0, ev, mixed_events

from features.events import event_to_json, parse_event
from pipelines.accumulators import FeatureSpec, LatenessPolicy, UserState
from pipelines.records import KafkaRecord
from pipelines.state_store import PipelineState
from pipelines.state_subset import _Touched, _touched, relevant_state

FAMILIES = ("users", "items", "sessions", "cooc", "bundles", "requests", "ids")
POLICY = LatenessPolicy(FeatureSpec().allowed_lateness_s)


def _record(value: bytes, offset: int) -> KafkaRecord:
    return KafkaRecord("events", 0, offset, 0, None, value)


def _exact(events) -> _Touched:
    touched = _Touched()
    for event in events:
        touched.add_event(parse_event(event))
    return touched


def test_records_read_without_the_contract_name_every_key_the_contract_events_touch():
    events = mixed_events()
    exact = _exact(events)
    read = _touched(PipelineState(), [_record(event_to_json(parse_event(e)), i) for i, e in enumerate(events)], POLICY)
    for family in FAMILIES:
        assert getattr(exact, family), family  # the mix exercises every family
        assert getattr(exact, family) <= getattr(read, family), family
    assert max(read.times) == max(exact.times)


def test_forms_the_reader_does_not_take_go_through_the_contract():
    event = ev("view", "u9", 0, item_id="i9", category_id="c9")
    upper_id = {**event, "event_id": event["event_id"].upper()}  # the contract normalises UUIDs
    lower_ts = ev("view", "u8", 5, item_id="i8", category_id="c8")
    lower_ts["ts"] = lower_ts["ts"].replace("T", "t").replace("Z", "z")  # ISO, not fromisoformat's
    unix_ts = {**ev("view", "u7", 6, item_id="i7"), "ts": T0 + 6}  # a number: the contract refuses it
    records = [_record(json.dumps(e).encode(), i) for i, e in enumerate([upper_id, lower_ts, unix_ts])]
    records += [_record(b"{broken", 3), _record(b"[1]", 4), _record(None, 5)]
    read = _touched(PipelineState(), records, POLICY)
    assert str(parse_event(upper_id).event_id) in read.ids
    assert {"u9", "u8"} <= read.users and {"i9", "i8"} <= read.items
    assert "u7" not in read.users  # not an event: the Beam run dead-letters it (wrong_type)
    assert max(read.times) == T0 + 5


def test_late_and_already_processed_records_touch_nothing():
    late = ev("view", "late-user", -3 * 86_400, item_id="late-item")
    done = ev("view", "done-user", 0, item_id="done-item")
    state = PipelineState(watermark=T0, offsets={0: 1})
    records = [_record(event_to_json(parse_event(done)), 0), _record(event_to_json(parse_event(late)), 1)]
    read = _touched(state, records, POLICY)
    assert not read.users and not read.items and not read.times


def test_relevant_state_passes_the_touched_users_and_those_whose_windows_move():
    spec = FeatureSpec()
    idle, touched, quiet = UserState(), UserState(), UserState()
    idle.add_update((T0 - 3500.0, "e-idle", "view", ()), spec)  # leaves the 1 h window when T moves by 200 s
    quiet.add_update((T0 - 100.0, "e-quiet", "view", ()), spec)  # stays in both windows
    state = PipelineState(watermark=T0, users={"idle": idle, "u1": touched, "quiet": quiet})
    passed = relevant_state(state, [_record(event_to_json(parse_event(ev("view", "u1", 200, item_id="i1"))), 0)], spec)
    assert set(passed.users) == {"idle", "u1"}


def _replay(events, monkeypatch, records_per_key: int, chunk: int = 4):
    """Micro-batches of ``chunk`` records through selection, the Beam run and the merge, as the
    runner does them: each batch's feature rows, and the state after the last."""
    import json as _json

    from pipelines import state_subset
    from pipelines.runner import compute_batch
    from pipelines.state_subset import merge_state

    monkeypatch.setattr(state_subset, "WHOLE_STATE_RECORDS_PER_KEY", records_per_key)
    spec = FeatureSpec()
    records = [_record(event_to_json(parse_event(e)), i) for i, e in enumerate(events)]
    state, rows = PipelineState(), []
    for start in range(0, len(records), chunk):
        batch = records[start:start + chunk]
        passed = relevant_state(state, batch, spec)
        result = compute_batch(batch, passed, spec, [], "events")
        state = merge_state(state, passed, result.state, spec)
        state.offsets = {0: batch[-1].offset + 1}
        rows.append({view: sorted(_json.dumps(r, sort_keys=True) for r in out) for view, out in result.features.items()})
    return rows, state


def test_a_state_passed_whole_gives_what_the_selected_part_gives(monkeypatch):
    """A state small against its batch is passed whole instead of selected: every batch's
    features and the final state must be the same either way (windows moving included)."""
    late_views = [ev("view", f"u{n}", 90_000 + 600 * n, session=f"s{n}", item_id="i1", category_id="c1") for n in range(6)]
    events = sorted(mixed_events(), key=lambda e: e["ts"]) + late_views
    whole = _replay(events, monkeypatch, records_per_key=0)  # every state is passed whole
    selected = _replay(events, monkeypatch, records_per_key=10**9)  # only an empty one is
    assert selected[0] == whole[0] and any(any(batch.values()) for batch in whole[0])
    assert selected[1] == whole[1]
