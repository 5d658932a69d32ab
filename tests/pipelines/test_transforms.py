"""Each Beam composite on its own (TestPipeline, Create, assert_that), against the pandas oracle;
and the state carried between batches: one batch == several batches == oracle.

The micro-batch composites take and give batched elements (``Packed`` lists, state as
``(shard, Packed({key: state}))``); ``_batches`` and ``_unbatched`` convert at the test's edges."""

from __future__ import annotations

import json

import apache_beam as beam
import pandas as pd
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from oracle import compute_features
from pipeline_support import T0, assert_frames_match, ev, mixed_events

from features.events import event_to_json, parse_event
from features.views import ALL_FEATURE_VIEWS, JOIN_KEY_OF_VIEW, feature_names
from pipelines.accumulators import FeatureSpec
from pipelines.packed import Packed
from pipelines.records import KafkaRecord
from pipelines.runner import compute_batch
from pipelines.state_store import PipelineState
from pipelines.transforms import (
    ComputeBundleFeatures,
    ComputeExperimentFeatures,
    ComputeItemCooccurrence,
    ComputeItemFeatures,
    ComputeUserFeatures,
    DeduplicateEvents,
    DropLateEvents,
    EventTimeWatermark,
    ParseEvents,
    ParseRecordBatches,
    shard_of,
)

SPEC = FeatureSpec()
BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=1"]


def _record(value: bytes, offset: int) -> KafkaRecord:
    return KafkaRecord("events", 0, offset, 0, b"k", value)


def _models(events):
    return [parse_event(e) for e in events]


def _batches(values, size=3):
    """Values as packed lists of ``size`` (several elements, so composites meet real batching)."""
    return [Packed(values[i:i + size]) for i in range(0, len(values), size)]


def _unbatched(pcoll, label):
    return pcoll | f"Unbatch{label}" >> beam.FlatMap(lambda batch: batch.value)


def _matches(expected: pd.DataFrame, key: str, label: str):
    def check(rows):
        actual = pd.DataFrame(list(rows)).set_index(key)
        assert_frames_match(actual, expected, label)

    return check


def test_parse_events_sends_invalid_records_to_dead_letters_with_reasons():
    good = mixed_events()[:3]
    bad = [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_utf8"),
        (json.dumps({**good[0], "type": "teleport"}).encode(), "unknown_event_type"),
        (json.dumps({k: v for k, v in good[0].items() if k != "user_id"}).encode(), "missing_field"),
        (json.dumps({**good[0], "surprise": 1}).encode(), "unknown_field"),
        (json.dumps({**good[0], "schema_version": 2}).encode(), "unsupported_schema_version"),
        (b"[1, 2]", "not_an_object"),
    ]
    records = [_record(event_to_json(parse_event(e)), i) for i, e in enumerate(good)]
    records += [_record(raw, 100 + i) for i, (raw, _) in enumerate(bad)]
    with TestPipeline(argv=BEAM_ARGS) as p:
        one = p | "Records" >> beam.Create(records) | "One" >> ParseEvents()
        batched = p | "Batches" >> beam.Create(_batches(records, 4)) | "Batched" >> ParseRecordBatches()
        for label, out in (("one", one), ("batched", batched)):
            parsed, dead = out["parsed"], out["dead_letters"]
            if label == "batched":
                parsed, dead = _unbatched(parsed, "P"), _unbatched(dead, "D")
            assert_that(parsed | f"Ids{label}" >> beam.Map(lambda r: str(r.event.event_id)),
                        equal_to([e["event_id"] for e in good]), label=f"good {label}")
            assert_that(
                dead | f"Reasons{label}" >> beam.Map(lambda d: (d.offset, d.reason)),
                equal_to([(100 + i, reason) for i, (_, reason) in enumerate(bad)]),
                label=f"bad {label}",
            )


def test_lake_rows_keep_the_wire_form_where_the_strict_parse_took_it():
    """A record the strict parse took is its event's JSON already (spacing and id forms aside),
    and parses back to the same event. A Unix-seconds time, which only the lenient parse used to
    take, is no event at all (the contract takes ISO-8601 times only)."""
    from features.events import EventRejected
    from pipelines.lake import lake_row
    from pipelines.transforms import parse_record

    event = ev("add_to_cart", "u1", 0, item_id="i1", category_id="c1", quantity=2)
    spaced = json.dumps(event, indent=1).encode()  # valid as it is, not canonical bytes
    upper = json.dumps({**event, "event_id": event["event_id"].upper()}).encode()
    bare = json.dumps({**event, "event_id": event["event_id"].replace("-", "")}).encode()
    rows = [lake_row(parse_record(_record(raw, i))) for i, raw in enumerate([spaced, upper, bare])]
    assert [row.event_json for row in rows] == [spaced.decode(), upper.decode(), bare.decode()]
    for row in rows:
        assert parse_event(json.loads(row.event_json)) == parse_event(event)
        assert row.event_id == event["event_id"] and row.ts_us == T0 * 1_000_000
    with pytest.raises(EventRejected) as info:
        parse_record(_record(json.dumps({**event, "ts": T0}).encode(), 3))
    assert info.value.reason == "wrong_type"


def test_drop_late_events_and_watermark():
    events = [ev("view", "u1", dt, item_id="i1") for dt in (0, -100, -5000)]
    parsed = [(0, i, m) for i, m in enumerate(_models(events))]
    from pipelines.records import ParsedRecord

    with TestPipeline(argv=BEAM_ARGS) as p:
        out = p | beam.Create(_batches([ParsedRecord(*x) for x in parsed], 2)) | DropLateEvents(T0 + 1000, 3600, "events")
        assert_that(_unbatched(out["events"], "E") | beam.Map(lambda e: e.ts.timestamp()), equal_to([T0, T0 - 100]), label="on_time")
        assert_that(_unbatched(out["dead_letters"], "D") | beam.Map(lambda d: (d.reason, d.offset)),
                    equal_to([("late_event", 2)]), label="late")
        wm = out["events"] | EventTimeWatermark(T0 + 1000)
        assert_that(wm, equal_to([T0 + 1000]), label="watermark")
        ahead = out["events"] | "Ahead" >> EventTimeWatermark(T0 - 10_000)
        assert_that(ahead, equal_to([T0]), label="watermark from events")


def test_deduplicate_events_within_and_across_batches():
    a, b, c = (ev("view", "u1", dt, item_id="i1") for dt in (0, 10, 20))
    events = _models([a, a, b, c])
    shards = 4
    seen = [(shard_of(c["event_id"], shards), Packed({c["event_id"]: T0 + 20.0}))]  # c was processed in an earlier batch
    with TestPipeline(argv=BEAM_ARGS) as p:
        as_of = p | "AsOf" >> beam.Create([T0 + 20.0])
        # The two copies of a arrive in different elements: they meet in a's shard.
        out = {"events": p | "E" >> beam.Create(_batches(events, 1)), "seen": p | "S" >> beam.Create(seen)} | DeduplicateEvents(
            as_of, 3600, shards)
        assert_that(_unbatched(out["events"], "E") | beam.Map(lambda e: str(e.event_id)),
                    equal_to([a["event_id"], b["event_id"]]), label="unique")
        assert_that(_unbatched(out["duplicates"], "D"), equal_to([a["event_id"], c["event_id"]]), label="dups")
        assert_that(out["seen"] | beam.FlatMap(lambda kv: [(k, kv[0] == shard_of(k, shards)) for k in kv[1].value]),
                    equal_to([(a["event_id"], True), (b["event_id"], True), (c["event_id"], True)]), label="seen")


def test_feature_composites_equal_oracle():
    """Each feature composite, asserted on its own, in one TestPipeline (one runner start-up)."""
    events = mixed_events()
    expected = compute_features(events, SPEC)
    models = _models(events)
    with TestPipeline(argv=BEAM_ARGS) as p:
        as_of = p | "AsOf" >> beam.Create([max(m.ts.timestamp() for m in models)])
        source = p | "Events" >> beam.Create(_batches(models, 7))

        def empty(label):
            return p | label >> beam.Create([])

        outputs = {
            "user_features": {"events": source, "state": empty("U")} | "Users" >> ComputeUserFeatures(as_of, SPEC, None),
            "item_features": {"events": source, "state": empty("I")} | "Items" >> ComputeItemFeatures(as_of, SPEC, None),
            "item_cooccurrence": {"events": source, "state": empty("C"), "sessions": empty("S")}
            | "Cooccurrence" >> ComputeItemCooccurrence(as_of, SPEC),
            "bundle_features": {"events": source, "state": empty("B")} | "Bundles" >> ComputeBundleFeatures(SPEC),
            "experiment_variant_features": {"events": source, "state": empty("V"), "requests": empty("R")}
            | "Experiments" >> ComputeExperimentFeatures(as_of, SPEC),
        }
        for view, out in outputs.items():
            assert len(expected[view]) > 0, view
            assert_that(_unbatched(out["features"], view), _matches(expected[view], JOIN_KEY_OF_VIEW[view], view),
                        label=f"Check{view}")


def test_feature_rows_have_the_feast_schema_columns():
    result = compute_batch(
        beam.Create([_record(event_to_json(parse_event(e)), i) for i, e in enumerate(mixed_events())]),
        PipelineState(), SPEC, BEAM_ARGS,
    )
    for view in ALL_FEATURE_VIEWS:
        rows = result.features[view.name]
        assert rows, view.name
        assert set(rows[0]) == {JOIN_KEY_OF_VIEW[view.name], *feature_names(view)}, view.name


def _latest(results):
    latest: dict[str, dict] = {}
    for result in results:
        for view, rows in result.features.items():
            for row in rows:
                latest.setdefault(view, {})[row[JOIN_KEY_OF_VIEW[view]]] = row
    return {view: pd.DataFrame(list(rows.values())).set_index(JOIN_KEY_OF_VIEW[view]) for view, rows in latest.items()}


def test_state_carried_across_batches_gives_the_same_features():
    events = sorted(mixed_events(), key=lambda e: e["ts"])
    records = [_record(event_to_json(parse_event(e)), i) for i, e in enumerate(events)]
    expected = compute_features(events, SPEC)
    one = compute_batch(beam.Create(records), PipelineState(), SPEC, BEAM_ARGS)
    state, results = PipelineState(), []
    for chunk in (records[:6], records[6:12], records[12:]):
        result = compute_batch(beam.Create(chunk), state, SPEC, BEAM_ARGS)
        state = result.state
        results.append(result)
    for label, got in (("one batch", _latest([one])), ("three batches", _latest(results))):
        for view, frame in expected.items():
            assert_frames_match(got[view], frame, f"{view} ({label})")
