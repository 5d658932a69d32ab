"""Running one micro-batch's Beam graph: inputs staged in, outputs collected out, and on the local
runner the graph built and translated once for every batch.

The graph itself (the composites of ``pipelines.transforms``) is ``pipelines.runner``'s; it is
written against ``BatchInputs``: PCollections that read the batch's records, its state subset and
its per-batch values (watermark, processed offsets) from files in a staging folder. Its outputs
go to ``_CollectFn``s, which hand them back to the driver.

Why the graph is kept: building the ~100-transform graph and translating it to the runner's proto
cost ~0.9 s of every micro-batch (more than half of a one-event ``--follow`` batch, measured).
With the per-batch values read at run time, one translated graph serves every batch: the local
FnApiRunner runs the same pipeline proto again on the newly staged inputs (``CompiledBatch``).
Other runners (``pipeline.beam_args`` naming Flink, Dataflow, or the DirectRunner's
multi-process mode) get the graph built for each batch (``run_built``), from the same code.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import tempfile
import threading
import types
import uuid
import weakref
from dataclasses import dataclass
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import apache_beam as beam
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import core as beam_core
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from pipelines.packed import passed_by_reference

__all__ = ["BatchInputs", "BatchOutputs", "CompiledBatch", "batch_options", "runs_in_process", "run_built", "stage_inputs"]

logger = logging.getLogger(__name__)

# What goes in: the records as lists (``Packed``), the state subset as ``{family: [(shard,
# Packed({key: state}))]}``, and ``{"watermark": float | None, "processed": {partition: offset}}``.
INPUT_NAMES = ("records", "state", "context")


@dataclass(frozen=True)
class BatchInputs:
    """The PCollections a batch graph starts from (see ``stage_inputs`` for their contents)."""

    records: PCollection
    state: Any  # the tagged outputs of the state loader: state[family] is a PCollection
    watermark: PCollection
    processed: PCollection


# A batch graph: (pipeline, its inputs) -> {output name: PCollection} for the driver to collect.
BatchGraph = Callable[[beam.Pipeline, BatchInputs], dict[str, PCollection]]


@dataclass(frozen=True)
class BatchOutputs:
    """What a batch's run gave back: its collected outputs by name, and its Beam metrics
    (``PipelineResult.metrics()``; None where the runner reports none)."""

    collected: dict[str, list[Any]]
    metrics: Any = None


def _metrics_of(result: Any) -> Any:
    """The run's metrics: the DoFns' counters reach the driver through Beam's own mechanism (the
    FnApiRunner's and the portable job service's results both answer ``metrics()``)."""
    try:
        return result.metrics()
    except Exception:  # noqa: BLE001 - a runner without metrics must not fail a batch that succeeded
        logger.warning("the runner reported no metrics for a micro-batch", exc_info=True)
        return None


def batch_options(beam_args: list[str]) -> PipelineOptions:
    """The options of a micro-batch's Beam run: ``beam_args``, with the DirectRunner's batch path
    pinned to the in-process FnApiRunner.

    Why: for a bounded pipeline the DirectRunner first tries the Prism runner, which downloads its
    binary from GitHub at run time. Offline that fails after a DNS lookup on every batch (0.4-0.9 s
    of a micro-batch, measured) and falls back to the FnApiRunner; online the batch would run on
    a downloaded binary, a different runner. The micro-batches are bounded and local, which is
    what the FnApiRunner runs (its ``direct_*`` options apply as under the DirectRunner). Other
    runners, and the streaming job (``pipelines.streaming``), are left as configured.
    """
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    runner = (standard.runner or "DirectRunner").lower()
    if runner.removesuffix("runner") in ("direct", "switchingdirect"):
        standard.runner = "FnApiRunner"
    return options


def runs_in_process(options: PipelineOptions) -> bool:
    """Whether every bundle runs in this process: the FnApiRunner, not in multi-process mode."""
    runner = (options.view_as(StandardOptions).runner or "").lower().removesuffix("runner")
    return runner == "fnapi" and options.view_as(DirectOptions).direct_running_mode != "multi_processing"


# --- inputs -----------------------------------------------------------------------------------

# path -> value staged for bundles of this process (no pickling when the runner is in-process).
_STAGED: dict[str, Any] = {}


def stage_inputs(folder: Path, values: dict[str, Any], in_process: bool) -> None:
    """Put a batch's input values (``INPUT_NAMES``) where its graph reads them: in memory for an
    in-process runner, else as pickle files in ``folder`` (workers share the driver's filesystem
    for these local micro-batches; on a cluster the streaming job reads Kafka itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in INPUT_NAMES:
        path = str(folder / f"{name}.pkl")
        if in_process:
            _STAGED[path] = values[name]
        else:
            with open(path, "wb") as handle:
                pickle.dump(values[name], handle, protocol=pickle.HIGHEST_PROTOCOL)


def _unstage(folder: Path) -> None:
    for name in INPUT_NAMES:
        _STAGED.pop(str(folder / f"{name}.pkl"), None)


def _load(path: str) -> Any:
    if path in _STAGED:
        return _STAGED[path]
    with open(path, "rb") as handle:
        return pickle.load(handle)


def _load_families(path: str):
    for name, shards in _load(path).items():
        for shard in shards:
            yield TaggedOutput(name, shard)


def read_inputs(p: beam.Pipeline, folder: Path, families: tuple[str, ...]) -> BatchInputs:
    """The input PCollections of a batch graph, read from ``folder`` when the pipeline runs.

    Not ``beam.Create`` of the values: Create pickles its values into the transform's payload,
    and Beam bz2-compresses every payload three times per run, 4-6 s per 20k records here; and a
    graph that holds no batch's values can run again for the next batch.
    """

    def path(name: str) -> list[str]:
        return [str(folder / f"{name}.pkl")]

    records = p | "Records" >> beam.Create(path("records"), reshuffle=False) | "LoadRecords" >> beam.FlatMap(_load)
    state = (
        p
        | "State" >> beam.Create(path("state"), reshuffle=False)
        | "LoadState" >> beam.FlatMap(_load_families).with_outputs(*families)
    )
    context = p | "Context" >> beam.Create(path("context"), reshuffle=False) | "LoadContext" >> beam.Map(_load)
    return BatchInputs(
        records=records,
        state=state,
        watermark=context | "Watermark" >> beam.Map(lambda c: c["watermark"]),
        processed=context | "Processed" >> beam.Map(lambda c: c["processed"]),
    )


# --- outputs ----------------------------------------------------------------------------------


class _CollectFn(beam.DoFn):
    """Hands each bundle's elements of one named output back to the driver: in memory when the
    bundle runs in the driver's process (the local FnApiRunner), else pickled into the batch's
    staging folder (workers of their own that share the driver's filesystem); the driver reads
    both after the pipeline finished (``_read_collected``).

    Why in memory: pickling the outputs (feature rows, states, lake rows) and unpickling them in the
    driver was ~0.7 s of an 84k-event batch; in the same process they need not be copied at all.
    """

    def __init__(self, folder: str, name: str):
        self.folder, self.name = folder, name
        self.driver_pid = os.getpid()

    def start_bundle(self):
        self.buffer: list[Any] = []

    def process(self, element):
        self.buffer.append(element)

    def finish_bundle(self):
        if not self.buffer:
            return
        if os.getpid() == self.driver_pid:
            with _IN_PROCESS_LOCK:
                _IN_PROCESS.setdefault(self.folder, {}).setdefault(self.name, []).extend(self.buffer)
            return
        path = Path(self.folder) / f"{self.name}.{uuid.uuid4().hex}.pkl"
        with open(path, "wb") as handle:
            pickle.dump(self.buffer, handle, protocol=pickle.HIGHEST_PROTOCOL)


# staging folder -> output name -> elements collected by bundles that ran in this process.
_IN_PROCESS: dict[str, dict[str, list[Any]]] = {}
_IN_PROCESS_LOCK = threading.Lock()


def _collect_all(outputs: dict[str, PCollection], folder: Path) -> None:
    # One collector per output, not one behind a Flatten: each fuses into the stage that produces
    # its output, so no element is encoded and decoded again on its way out.
    for name, pcoll in outputs.items():
        pcoll | f"Collect{name}" >> beam.ParDo(_CollectFn(str(folder), name))


def _read_collected(folder: Path) -> dict[str, list[Any]]:
    with _IN_PROCESS_LOCK:
        out = _IN_PROCESS.pop(str(folder), {})
    for path in sorted(folder.glob("*.pkl")):
        with open(path, "rb") as handle:
            out.setdefault(path.name.split(".", 1)[0], []).extend(pickle.load(handle))
    return out


def _clear_outputs(folder: Path) -> None:
    with _IN_PROCESS_LOCK:
        _IN_PROCESS.pop(str(folder), None)
    for path in folder.glob("*.pkl"):
        path.unlink()


# --- running ----------------------------------------------------------------------------------

# The state sampler's period while a micro-batch runs in this process (Beam's default: 200 ms).
STATE_SAMPLING_PERIOD_MS = 10
_SAMPLER_LOCK = threading.Lock()


@contextmanager
def _short_state_sampling() -> Iterator[None]:
    """Bundles that sample their state every ``STATE_SAMPLING_PERIOD_MS``.

    Why: each bundle's ``StateSampler`` thread sleeps one period at a time (ramping from 2 ms to
    the 200 ms default within ~1 s, apache/beam#5466), and the bundle's end joins it, so every
    bundle longer than ~1 s waits ~100 ms more; a batch runs ~22 bundles: 0.6 s of wall time of an
    84k-event batch, with nothing computed (measured: wall minus CPU, 0.6-0.7 s at 200 ms,
    0.01-0.04 s at 10 ms). The runner gives no option for the period, so its constructor's default
    is set for the run and restored after; a 10 ms wake-up costs no measurable CPU.
    """
    with _SAMPLER_LOCK:
        init = statesampler.StateSampler.__init__
        previous = init.__defaults__
        init.__defaults__ = (STATE_SAMPLING_PERIOD_MS,)
        try:
            yield
        finally:
            init.__defaults__ = previous


_SIGNATURES_LOCK = threading.Lock()


ArgsDefaults = Callable[[Any], tuple[list[str], list[Any]]]


def _remembering(args_defaults: ArgsDefaults) -> ArgsDefaults:
    """``apache_beam.transforms.core.get_function_args_defaults``, remembering its answer for each
    Python function (weakly: the lambdas of a run's unpickled DoFns go with them), bound or not."""
    by_function = {False: weakref.WeakKeyDictionary(), True: weakref.WeakKeyDictionary()}

    def remembered(f: Any) -> tuple[list[str], list[Any]]:
        bound = isinstance(f, types.MethodType)
        function = f.__func__ if bound else f
        if type(function) is not types.FunctionType:  # builtins, partials, callables: as they are
            return args_defaults(f)
        known = by_function[bound].get(function)
        if known is None:
            known = by_function[bound][function] = args_defaults(f)
        return list(known[0]), list(known[1])

    return remembered


@contextmanager
def _remembered_signatures() -> Iterator[None]:
    """Bundles whose DoFns' signatures are inspected once per function, not once per bundle.

    Why: each bundle of a run builds its operations anew, and each looks for state and timer
    parameters in every method of its DoFn (``userstate.get_dofn_specs``: ``inspect.signature`` of
    ~30 methods a DoFn, ~5,400 calls a run). That was ~0.15 s of every micro-batch's fixed cost of
    ~0.5 s (a 19-event batch: 0.49 -> 0.34 s, 11 interleaved pairs). A signature depends only on its function,
    so each is remembered for the run. Beam gives no option for it; the function is swapped for
    the run and restored after, like the sampler's period.
    """
    with _SIGNATURES_LOCK:
        previous = beam_core.get_function_args_defaults
        beam_core.get_function_args_defaults = _remembering(previous)
        try:
            yield
        finally:
            beam_core.get_function_args_defaults = previous



def run_built(graph: BatchGraph, values: dict[str, Any], beam_args: list[str], staging_root: Path | None,
              families: tuple[str, ...]) -> BatchOutputs:
    """Build the graph for this batch, run it once and return its collected outputs and metrics."""
    options = batch_options(beam_args)
    folder = Path(tempfile.mkdtemp(prefix="streamrec-batch-", dir=_existing(staging_root)))
    inputs = folder / "inputs"
    in_process = runs_in_process(options)
    stage_inputs(inputs, values, in_process)
    try:
        with _short_state_sampling(), _remembered_signatures(), \
                (passed_by_reference() if in_process else nullcontext()), beam.Pipeline(options=options) as p:
            _collect_all(graph(p, read_inputs(p, inputs, families)), folder)
        return BatchOutputs(_read_collected(folder), _metrics_of(p.result))
    finally:
        _unstage(inputs)
        _clear_outputs(folder)
        shutil.rmtree(folder, ignore_errors=True)


class _KeepingFnApiRunner(FnApiRunner):
    """The FnApiRunner, keeping the pipeline proto of its first run to run it again."""

    proto: Any = None

    def run_via_runner_api(self, pipeline_proto, options):
        if self.proto is None:
            self.proto = copy.deepcopy(pipeline_proto)
        return super().run_via_runner_api(pipeline_proto, options)


class CompiledBatch:
    """A batch graph built once and run on each batch's staged inputs (in-process runner only).

    The first ``run`` builds the pipeline and runs it the usual way (``Pipeline.run``: option
    set-up, translation); later runs hand a copy of the translated proto to the same FnApiRunner.
    Its DoFns are unpickled from the proto on every run, so no bundle sees another batch's values.
    """

    FOLDER_PREFIX = "streamrec-graph-"

    def __init__(self, graph: BatchGraph, beam_args: list[str], staging_root: Path | None, families: tuple[str, ...]):
        self.options = batch_options(beam_args)
        if not runs_in_process(self.options):
            raise ValueError(f"a compiled batch runs on the in-process FnApiRunner, not with {beam_args}")
        self.folder = Path(tempfile.mkdtemp(prefix=f"{self.FOLDER_PREFIX}{os.getpid()}-", dir=_existing(staging_root)))
        self._runner = _KeepingFnApiRunner()
        self._pipeline = beam.Pipeline(runner=self._runner, options=self.options)
        _collect_all(graph(self._pipeline, read_inputs(self._pipeline, self.folder / "inputs", families)), self.folder)
        self._lock = threading.Lock()

    def run(self, values: dict[str, Any]) -> BatchOutputs:
        """Run the graph on ``values`` (``INPUT_NAMES``) and return its collected outputs and metrics
        (each run's own: the runner starts every run with fresh counters)."""
        inputs = self.folder / "inputs"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)  # removed with a stale staging folder
            _clear_outputs(self.folder)
            stage_inputs(inputs, values, in_process=True)
            try:
                with _short_state_sampling(), _remembered_signatures(), passed_by_reference():
                    if self._runner.proto is None:
                        result = self._pipeline.run()
                    else:
                        result = self._runner.run_via_runner_api(copy.deepcopy(self._runner.proto), self.options)
                    result.wait_until_finish()
                return BatchOutputs(_read_collected(self.folder), _metrics_of(result))
            finally:
                _unstage(inputs)
                _clear_outputs(self.folder)


def _existing(folder: Path | None) -> Path | None:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    return folder
