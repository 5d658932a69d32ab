"""The micro-batch's plain and columnar forms against the per-event forms they stand for.

An event's ``EventRow`` gives every family the values the family read from the event itself;
de-duplication picks the same copy from rows (tie-broken by the event's canonical JSON, never the
wire bytes) as from events; ``lake_table`` writes the very lake files ``lake_row`` wrote; one
``UserState.add_updates`` leaves the state ``add_update`` per event leaves."""

from __future__ import annotations

import json
import random

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from pipeline_support import T0, ev, mixed_events

from features.events import event_to_json, parse_event
from pipelines.accumulators import (
    FeatureSpec,
    UserState,
    bundle_signals,
    event_seconds,
    item_signals,
    user_update,
)
from pipelines.kafka_source import KafkaOffsetRange
from pipelines.lake import lake_row, lake_table, write_event_lake
from pipelines.packed import Packed
from pipelines.event_rows import parse_ahead, parsed_record_of
from pipelines.records import KafkaRecord, ParsedRecord, ParsedRow
from pipelines.transforms import (
    ATTRIBUTED_TYPES,
    ComputeBundleFeatures,
    ComputeExperimentFeatures,
    ComputeItemCooccurrence,
    ComputeItemFeatures,
    ComputeUserFeatures,
    EventTimeWatermark,
    ROW_BUNDLES,
    ROW_EVENT,
    ROW_ID,
    ROW_JSON,
    ROW_USER,
    DeduplicateEvents,
    DropLateEvents,
    _item_signal_values,
    _row_json,
    _rows,
    _session_line_values,
    _user_update_values,
    event_row,
    parse_record,
    session_lines,
    shard_of,
)

BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=1"]


def _every_kind() -> list:
    """Models of every event type, several lines, both impression surfaces, clicks on items and bundles."""
    line = lambda item, cat, q=1: {"item_id": item, "quantity": q, "category_id": cat}  # noqa: E731
    extra = [
        ev("purchase", "u4", 10, session="s4", items=[line("i1", "c1", 3), line("i2", None), line("i3", "c3")],
           currency="EUR", order_id="o9"),
        ev("click", "u4", 20, session="s4", request_id="r9", bundle_id="b9", position=0),
        ev("add_to_cart", "u4", 30, session="s4", item_id="i9", quantity=4),
    ]
    return [parse_event(e) for e in mixed_events() + extra]


def test_an_event_row_gives_each_family_what_the_event_gave():
    models = _every_kind()
    rows = [event_row(m) for m in models]
    assert _rows(models) == rows and _rows(rows) is rows
    for m, row in zip(models, rows):
        assert list(_user_update_values([row])) == [(m.user_id, user_update(m))]
        ts = event_seconds(m)
        assert _item_signal_values([row]) == [(item, ts, kind, q) for item, kind, q in item_signals(m)]
        assert list(_session_line_values([row])) == session_lines(m)
        assert list(row[ROW_BUNDLES]) == bundle_signals(m)
        assert row[ROW_EVENT] is (m if m.type in ATTRIBUTED_TYPES else None)
        assert row[ROW_ID] == str(m.event_id) and row[ROW_USER] == m.user_id
        assert row[ROW_JSON] is None  # asked for by de-duplication only
    assert {m.type for m in models} >= {"view", "add_to_cart", "remove_from_cart", "favorite", "purchase",
                                        "search", "impression", "click", "bundle_purchase"}


def test_rows_made_at_the_lateness_check_carry_what_the_tie_break_needs():
    event = ev("view", "u1", 0, item_id="i1", category_id="c1")
    spaced = json.dumps(event, indent=1).encode()
    strict = parse_record(KafkaRecord("events", 0, 0, 0, None, spaced))
    lenient = ParsedRecord(0, 1, strict.event)  # no wire form: the canonical JSON goes with the row
    with TestPipeline(argv=BEAM_ARGS) as p:
        out = p | beam.Create([Packed([strict, lenient])]) | DropLateEvents(None, 3600, "events", as_rows=True)
        assert_that(out["events"] | beam.FlatMap(lambda b: [(r[-2], r[-1]) for r in b.value]),
                    equal_to([(spaced, None), (None, event_to_json(strict.event))]))
    assert _row_json(event_row(strict.event, spaced)) == event_to_json(strict.event)


def _copies():
    """Copies of ids, as (wire bytes, event dict): a's second copy differs and loses on canonical
    JSON but its wire bytes (indented) sort first; b is unique; c was seen in an earlier batch."""
    a = ev("view", "u1", 0, session="s1", item_id="i1", category_id="c1")
    a2 = {**a, "session_id": "s9", "item_id": "i0"}
    b = ev("view", "u2", 10, item_id="i2")
    c = ev("view", "u3", 20, item_id="i3")
    copies = [(json.dumps(a2, indent=1).encode(), a2), (json.dumps(a).encode(), a),
              (event_to_json(parse_event(a)), a), (json.dumps(b).encode(), b), (json.dumps(c).encode(), c)]
    assert json.dumps(a2, indent=1).encode() < json.dumps(a).encode()
    assert event_to_json(parse_event(a)) < event_to_json(parse_event(a2))
    return copies, a, b, c


@pytest.mark.parametrize("as_rows", [False, True], ids=["events", "rows"])
def test_deduplication_picks_the_same_copy_from_rows_as_from_events(as_rows):
    copies, a, b, c = _copies()
    random.Random(3).shuffle(copies)
    records = [parse_record(KafkaRecord("events", 0, i, 0, None, wire)) for i, (wire, _) in enumerate(copies)]
    values = [event_row(r.event, r.wire, canonical=True) if as_rows else r.event for r in records]
    shards = 4
    seen = [(shard_of(c["event_id"], shards), Packed({c["event_id"]: T0 + 20.0}))]
    expected_a = event_to_json(parse_event(a))

    def winner(value):
        return (value[ROW_ID], _row_json(value)) if as_rows else (str(value.event_id), event_to_json(value))

    with TestPipeline(argv=BEAM_ARGS) as p:
        as_of = p | "AsOf" >> beam.Create([T0 + 20.0])
        batches = [Packed(values[i:i + 2]) for i in range(0, len(values), 2)]  # copies meet across elements
        out = {"events": p | "E" >> beam.Create(batches), "seen": p | "S" >> beam.Create(seen)} | DeduplicateEvents(
            as_of, 3600, shards)
        assert_that(out["events"] | beam.FlatMap(lambda batch: [winner(v) for v in batch.value]),
                    equal_to([(a["event_id"], expected_a), (b["event_id"], event_to_json(parse_event(b)))]),
                    label="unique")
        assert_that(out["duplicates"] | beam.FlatMap(lambda batch: batch.value),
                    equal_to([a["event_id"], a["event_id"], c["event_id"]]), label="dups")
        assert_that(out["seen"] | beam.FlatMap(lambda kv: sorted(kv[1].value.items())),
                    equal_to([(a["event_id"], T0), (b["event_id"], T0 + 10.0), (c["event_id"], T0 + 20.0)]),
                    label="seen")


def _canonical_rows(rows) -> list:
    """Feature rows as sortable, comparable tuples (lists as tuples)."""
    return sorted(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in row.items()) for row in rows)


def test_the_row_path_folds_what_the_event_path_folds():
    """The micro-batch graph's path (rows made at the lateness check) against the composites fed
    events: the same features and states, with late events, differing copies of an id, an id seen
    before, records without a wire form and every event type."""
    copies, a, _b, c = _copies()
    events = [*mixed_events(), ev("view", "u5", -500_000, item_id="i1")]  # the last one is late
    values = [json.dumps(e, indent=i % 2 or None).encode() for i, e in enumerate(events)] + [w for w, _ in copies]
    parsed = [parse_record(KafkaRecord("events", i % 2, i, 0, None, v)) for i, v in enumerate(values)]
    parsed = [r if i % 7 else ParsedRecord(r.partition, r.offset, r.event) for i, r in enumerate(parsed)]
    watermark, lateness, shards = T0 + 10_000.0, 86_400, 4
    spec = FeatureSpec(allowed_lateness_s=lateness)
    seen = [(shard_of(c["event_id"], shards), Packed({c["event_id"]: T0 + 20.0}))]

    def branch(p, label: str, as_rows: bool):
        records = p | f"Records{label}" >> beam.Create([Packed(parsed[i:i + 5]) for i in range(0, len(parsed), 5)])
        on_time = records | f"Lateness{label}" >> DropLateEvents(watermark, lateness, "events", as_rows=as_rows)
        as_of = on_time["events"] | f"AsOf{label}" >> EventTimeWatermark(watermark)
        unique = {"events": on_time["events"], "seen": p | f"Seen{label}" >> beam.Create(seen)} | (
            f"Dedupe{label}" >> DeduplicateEvents(as_of, lateness, shards))
        rows = unique["events"]

        def empty(name):
            return p | f"{name}{label}" >> beam.Create([])

        outs = {
            "users": {"events": rows, "state": empty("U")} | f"Users{label}" >> ComputeUserFeatures(as_of, spec, watermark, shards),
            "items": {"events": rows, "state": empty("I")} | f"Items{label}" >> ComputeItemFeatures(as_of, spec, watermark, shards),
            "cooc": {"events": rows, "sessions": empty("S"), "state": empty("C")}
            | f"Cooc{label}" >> ComputeItemCooccurrence(as_of, spec, shards),
            "bundles": {"events": rows, "state": empty("B")} | f"Bundles{label}" >> ComputeBundleFeatures(spec, shards),
            "variants": {"events": rows, "requests": empty("R"), "state": empty("V")}
            | f"Variants{label}" >> ComputeExperimentFeatures(as_of, spec, shards),
        }
        tagged = [unique["seen"] | f"SeenOut{label}" >> beam.FlatMap(lambda kv: [("seen", sorted(kv[1].value.items()))]),
                  unique["duplicates"] | f"Dups{label}" >> beam.FlatMap(lambda b: [("dup", d) for d in b.value])]
        for name, out in outs.items():
            tagged.append(out["features"] | f"F{name}{label}" >> beam.Map(lambda b, n=name: (n, _canonical_rows(b.value))))
            for kind in ("state", "sessions", "requests"):
                if kind in out:
                    tagged.append(out[kind] | f"S{kind}{name}{label}" >> beam.FlatMap(
                        lambda kv, n=f"{name}:{kind}": [(n, k, repr(v)) for k, v in sorted(kv[1].value.items())]))
        return tagged | f"All{label}" >> beam.Flatten() | f"Tag{label}" >> beam.Map(lambda x, t=label: (t, x))

    def same(tagged):
        by_label = {"events": [], "rows": []}
        for label, value in tagged:
            by_label[label].append(value)
        got_events, got_rows = (sorted(map(repr, by_label[k])) for k in ("events", "rows"))
        assert got_rows == got_events
        names = {v[0] for v in by_label["rows"]}
        assert {"users", "items", "cooc", "bundles", "variants", "dup", "users:state", "cooc:sessions"} <= names, names

    with TestPipeline(argv=BEAM_ARGS) as p:
        both = (branch(p, "events", False), branch(p, "rows", True)) | beam.Flatten()
        assert_that(both, same)


def _parsed_records() -> list[ParsedRecord]:
    """Parsed records over several partitions and days, with non-canonical wire forms, records
    without one (the lenient parse's), sub-second and far-future times."""
    rng = random.Random(7)
    out = []
    for i in range(300):
        dt = rng.choice([0, 0.000001, 0.5, 0.123457, 86_399.999999, 86_400, 3 * 86_400 + 7.25, -20_000])
        e = ev(rng.choice(["view", "add_to_cart"]), f"u{i % 9}", dt + i, session=f"s{i % 4}", item_id=f"i{i % 13}")
        if i % 50 == 7:
            e["ts"] = "2231-06-01T12:34:56.789012Z"  # float seconds * 1e6 is inexact this far out
        wire = json.dumps(e, indent=i % 3 or None).encode() if i % 5 else event_to_json(parse_event(e))
        record = parse_record(KafkaRecord("events", i % 3, 1000 + i, 0, None, wire))
        out.append(record if i % 11 else ParsedRecord(record.partition, record.offset, record.event))
    return out


def test_lake_tables_write_the_files_lake_rows_wrote(tmp_path):
    parsed = _parsed_records()
    assert any(r.wire is None for r in parsed) and any(r.wire is not None for r in parsed)
    table = lake_table(parsed)
    micros = table["ts"].cast("int64").to_pylist()
    assert [tuple(row) for row in map(lake_row, parsed)] == [
        (r["event_id"], r["type"], r["user_id"], r["session_id"], us, r["kafka_partition"], r["kafka_offset"], r["event_json"])
        for r, us in zip(table.to_pylist(), micros)]
    ranges = [KafkaOffsetRange("events", p, 1000, 1300) for p in range(3)]
    chunks = [lake_table(parsed[i:i + 64]) for i in range(0, len(parsed), 64)]
    random.Random(1).shuffle(chunks)  # elements reach the sink in any order
    assert write_event_lake(tmp_path / "rows", ranges, [lake_row(r) for r in parsed]) == len(parsed)
    assert write_event_lake(tmp_path / "tables", ranges, chunks) == len(parsed)
    rows_files = sorted(p.relative_to(tmp_path / "rows") for p in (tmp_path / "rows").rglob("*.parquet"))
    table_files = sorted(p.relative_to(tmp_path / "tables") for p in (tmp_path / "tables").rglob("*.parquet"))
    assert len(rows_files) > 6 and rows_files == table_files
    for name in rows_files:
        assert (tmp_path / "rows" / name).read_bytes() == (tmp_path / "tables" / name).read_bytes(), name
    assert write_event_lake(tmp_path / "empty", ranges, [lake_table([])]) == 0
    # Records parsed ahead in the reader process (``ParsedRow``), mixed with parsed ones: the same files.
    mixed = [ParsedRow(r.partition, r.offset, event_row(r.event, r.wire, canonical=True)) if r.wire and i % 3 else r
             for i, r in enumerate(parsed)]
    assert sum(type(r) is ParsedRow for r in mixed) > 100
    mixed_chunks = [lake_table(mixed[i:i + 64]) for i in range(0, len(mixed), 64)]
    assert write_event_lake(tmp_path / "mixed", ranges, mixed_chunks) == len(parsed)
    for name in rows_files:
        assert (tmp_path / "rows" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes(), name


def test_records_parsed_ahead_are_the_rows_the_graph_makes():
    """``parse_ahead`` (in the reader process): what the strict parse takes becomes the row the
    lateness check makes of it; everything else stays a record, for the Beam run's parse and dead
    letters; ``parsed_record_of`` gives back the parsed record."""
    events = [*mixed_events(), ev("view", "u1", 5, item_id="i1")]
    values = [json.dumps(e, indent=i % 2 or None).encode() for i, e in enumerate(events)]
    records = [KafkaRecord("events", i % 3, i, 0, b"k", v) for i, v in enumerate(values)]
    refused = [KafkaRecord("events", 0, 90, 0, b"k", b"[1"), KafkaRecord("events", 0, 91, 0, b"k", None),
               KafkaRecord("events", 0, 92, 0, b"k", json.dumps({**events[0], "ts": T0}).encode())]
    ahead = parse_ahead([*records, *refused])
    assert ahead[len(records):] == refused
    for record, row in zip(records, ahead):
        parsed = parse_record(record)
        assert row == ParsedRow(record.partition, record.offset, event_row(parsed.event, record.value, canonical=True))
        assert parsed_record_of(row) == parsed


def _user_updates(rng: random.Random, n: int) -> list:
    kinds = ["view", "add_to_cart", "purchase", "search", "favorite", "click"]
    updates = []
    for i in range(n):
        kind = rng.choice(kinds)
        lines = () if kind == "search" else tuple(
            (f"i{rng.randrange(9)}", rng.choice([None, "c1", "c2", "c3"]), kind, 1) for _ in range(rng.choice([1, 1, 3])))
        updates.append((T0 + rng.choice([0, 1, 1, 5, 60, 3600]) * i, f"e{i:04d}", kind, lines))
    return updates


@pytest.mark.parametrize("sequence_length", [0, 1, 4, 50])
def test_user_add_updates_leaves_the_state_add_update_leaves(sequence_length):
    rng = random.Random(sequence_length)
    spec = FeatureSpec(sequence_length=sequence_length)
    for carried in range(3):
        one, many = UserState(), UserState()
        for state in (one, many):  # a carried state: its sequence in no particular order
            for update in _user_updates(random.Random(carried), carried * 3):
                state.add_update(update, spec)
            state.sequence.reverse()
        for size in (0, 1, sequence_length, sequence_length + 1, 40):
            updates = sorted(_user_updates(rng, size))
            for update in updates:
                one.add_update(update, spec)
            many.add_updates(updates, spec)
            assert one == many and one.sequence == many.sequence and list(one.affinity) == list(many.affinity)
