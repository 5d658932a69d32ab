"""A micro-batch's Beam run: its runner options, and how its outputs leave the run (in memory from
bundles in the driver's process, through the staging folder from bundles in worker processes)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle

import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from pipelines.packed import Packed
from pipelines.batch_run import _CollectFn, _read_collected, batch_options


def _bundle(fn: _CollectFn, *elements: object) -> None:
    fn.start_bundle()
    for element in elements:
        fn.process(element)
    fn.finish_bundle()


def test_outputs_come_back_from_the_driver_and_from_worker_processes(tmp_path):
    here = _CollectFn(str(tmp_path), "lake")
    worker = pickle.loads(pickle.dumps(_CollectFn(str(tmp_path), "lake")))
    worker.driver_pid = -1  # as if the bundle ran in a worker process of its own
    _bundle(here, Packed([3]), Packed([4]))
    _bundle(worker, Packed([1, 2]))
    _bundle(here)  # an empty bundle writes nothing
    assert len(list(tmp_path.glob("lake.*.pkl"))) == 1  # the worker's bundle only
    collected = _read_collected(tmp_path)
    assert sorted(v for packed in collected["lake"] for v in packed.value) == [1, 2, 3, 4]
    # The in-memory part is handed over once; the staged files stay until the folder is removed.
    assert [v for packed in _read_collected(tmp_path)["lake"] for v in packed.value] == [1, 2]


@pytest.mark.parametrize(
    ("args", "runner"),
    [
        ([], "FnApiRunner"),
        (["--runner=DirectRunner", "--direct_num_workers=1"], "FnApiRunner"),
        (["--runner=direct"], "FnApiRunner"),
        (["--runner=SwitchingDirectRunner"], "FnApiRunner"),
        (["--runner=FlinkRunner", "--flink_master=localhost:8081"], "FlinkRunner"),
        (["--runner=DataflowRunner"], "DataflowRunner"),
    ],
)
def test_local_batches_run_in_process_without_trying_prism(args, runner):
    """The DirectRunner would try Prism first, downloading its binary at run time."""
    options = batch_options([*args, "--direct_running_mode=multi_threading"])
    assert options.view_as(StandardOptions).runner == runner
    assert options.view_as(DirectOptions).direct_running_mode == "multi_threading"  # still applies


def _rows(result) -> dict[str, list[str]]:
    return {view: sorted(json.dumps(r, sort_keys=True) for r in rows) for view, rows in result.features.items()}


def test_a_compiled_graph_gives_each_batch_what_a_graph_built_for_it_gives(tmp_path):
    """The graph is built once and run on every batch: each batch's watermark, processed offsets
    and state must come from its own inputs, never from the batch that built the graph."""
    import apache_beam as beam
    from pipeline_support import mixed_events

    from features.events import event_to_json, parse_event
    from pipelines.accumulators import FeatureSpec
    from pipelines.records import KafkaRecord
    from pipelines.runner import compute_batch
    from pipelines.state_store import PipelineState

    args = ["--runner=DirectRunner", "--direct_num_workers=1"]
    events = sorted(mixed_events(), key=lambda e: e["ts"])
    records = [KafkaRecord("events", 0, i, 0, b"k", event_to_json(parse_event(e))) for i, e in enumerate(events)]
    # A re-delivered record the first batch already folded in (offset below the processed one).
    chunks = [records[:9], records[5:]]
    compute_batch([], PipelineState(), FeatureSpec(), args, "events", tmp_path)  # builds the graph
    compiled_state = built_state = PipelineState()
    for chunk in chunks:
        compiled = compute_batch(chunk, compiled_state, FeatureSpec(), args, "events", tmp_path)
        built = compute_batch(beam.Create(chunk), built_state, FeatureSpec(), args, "events", tmp_path)
        assert _rows(compiled) == _rows(built) and any(_rows(compiled).values())
        assert (compiled.as_of, compiled.reprocessed, compiled.records) == (built.as_of, built.reprocessed, built.records)
        assert compiled.state == built.state
        compiled_state = dataclasses.replace(compiled.state, offsets={0: chunk[-1].offset + 1})
        built_state = dataclasses.replace(built.state, offsets={0: chunk[-1].offset + 1})
    assert compiled.reprocessed == 4 and compiled.as_of > compute_batch(records[:9], PipelineState(), FeatureSpec(), args, "events", tmp_path).as_of


def test_records_parsed_ahead_give_the_batch_what_the_records_give(tmp_path, monkeypatch):
    """The reader process parses a large batch's records ahead (``parse_ahead``): its ``ParsedRow``s
    and the records the strict parse refused, mixed, give the same features, lake, dead letters
    (late and refused ones), counts and state as the raw records, with ``Packed`` elements passed
    by reference between stages and pickled."""
    from pipeline_support import T0, ev, mixed_events

    from pipelines import batch_run

    from features.events import event_to_json, parse_event
    from pipelines.accumulators import FeatureSpec
    from pipelines.event_rows import parse_ahead
    from pipelines.lake import LAKE_SCHEMA
    from pipelines.records import KafkaRecord, ParsedRow
    from pipelines.runner import compute_batch
    from pipelines.state_store import PipelineState

    events = [*mixed_events(), ev("view", "u9", -200_000, item_id="i1")]  # the last one is late
    values = [json.dumps(e, indent=i % 2 or None).encode() for i, e in enumerate(events)]
    values += [values[3], b"{not json", json.dumps({**events[0], "user_id": 7}).encode()]  # a copy, two refused
    records = [KafkaRecord("events", i % 2, i, 0, b"k", v) for i, v in enumerate(values)]
    records.append(KafkaRecord("events", 0, len(values), 0, b"k", None))
    ahead = parse_ahead(records)
    assert sum(type(r) is ParsedRow for r in ahead) == len(events) + 1 and len(ahead) == len(records)
    state = PipelineState(watermark=T0 + 1_000.0, offsets={0: 0, 1: 0})

    def outcome(read, args):
        result = compute_batch(read, state, FeatureSpec(), args, "events", tmp_path)
        lake = pa.concat_tables(result.lake).sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
        return (_rows(result), lake.cast(LAKE_SCHEMA).to_pylist(), sorted(result.dead_letters), result.duplicates,
                result.records, result.as_of, result.state, {k: v for k, v in result.counters.items() if v})

    args = ["--runner=DirectRunner", "--direct_num_workers=1"]
    for by_reference in (True, False):
        if not by_reference:
            monkeypatch.setattr(batch_run, "passed_by_reference", contextlib.nullcontext)
        raw, parsed = outcome(records, args), outcome(ahead, args)
        assert parsed == raw
        assert {d.reason for d in raw[2]} == {"late_event", "invalid_json", "wrong_type", "empty"}
        assert raw[3] == 1 and any(raw[0].values())


def test_bundles_of_a_batch_sample_their_state_with_the_short_period(tmp_path, monkeypatch):
    """Each bundle's end waits out its state sampler's sleep: the batch's bundles use the short
    period, and Beam's default is back after the run."""
    from apache_beam.runners.worker import statesampler

    from pipelines.accumulators import FeatureSpec
    from pipelines.batch_run import STATE_SAMPLING_PERIOD_MS
    from pipelines.runner import compute_batch
    from pipelines.state_store import PipelineState

    periods: list[int] = []
    start = statesampler.StateSampler.start

    def recording_start(self):
        periods.append(self.sampling_period_ms)
        start(self)

    monkeypatch.setattr(statesampler.StateSampler, "start", recording_start)
    default = statesampler.StateSampler.__init__.__defaults__
    for _ in range(2):  # the first run builds the graph, the second re-runs it
        compute_batch([], PipelineState(), FeatureSpec(), [], "events", tmp_path)
    assert periods and set(periods) == {STATE_SAMPLING_PERIOD_MS}
    assert statesampler.StateSampler.__init__.__defaults__ == default


def test_remembered_signatures_answer_as_beam_does_once_per_function():
    import gc
    import weakref

    import apache_beam as beam
    from apache_beam.transforms import core, userstate
    from apache_beam.transforms.userstate import BagStateSpec

    from pipelines.batch_run import _remembered_signatures, _remembering

    calls: list[str] = []  # names: holding the functions would keep them alive

    def counting(f):
        calls.append(f.__name__)
        return core.get_function_args_defaults(f)

    remembered = _remembering(counting)

    class Stateful(beam.DoFn):
        BAG = BagStateSpec("bag", beam.coders.VarIntCoder())

        def process(self, element, bag=beam.DoFn.StateParam(BAG), stamp=beam.DoFn.TimestampParam):
            yield element

    def plain(a, b=2, *rest, c=3):
        return a

    stateful = Stateful()
    for f in (plain, stateful.process, Stateful.process, stateful.start_bundle, len):
        assert remembered(f) == core.get_function_args_defaults(f)
        assert remembered(f) == core.get_function_args_defaults(f)
    # Bound and unbound forms of one function are told apart; a builtin is never remembered.
    assert remembered(stateful.process)[0] == ["element", "bag", "stamp"]
    assert remembered(Stateful.process)[0] == ["self", "element", "bag", "stamp"]
    assert sorted(calls) == sorted(["plain", "process", "process", "start_bundle", "len", "len"])
    # The lists handed out are the caller's own.
    args, defaults = remembered(plain)
    args.append("mutated")
    assert remembered(plain)[0] == ["a", "b"]
    # Weakly: a run's unpickled lambdas are not kept alive.
    fn = lambda x, y=1: x  # noqa: E731
    remembered(fn)
    gone = weakref.ref(fn)
    del fn
    gc.collect()
    assert gone() is None

    # In a run, Beam's own search for state specs sees the same specs; restored after.
    original = core.get_function_args_defaults
    with _remembered_signatures():
        assert core.get_function_args_defaults is not original
        assert userstate.get_dofn_specs(Stateful()) == userstate.get_dofn_specs(stateful)
        assert userstate.get_dofn_specs(Stateful())[0] == {Stateful.BAG}
    assert core.get_function_args_defaults is original
