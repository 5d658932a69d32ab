"""A micro-batch's Beam run: its runner options, and how its outputs leave the run (in memory from
bundles in the driver's process, through the staging folder from bundles in worker processes)."""

from __future__ import annotations

import pickle

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
