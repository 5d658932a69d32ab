"""How a micro-batch's outputs leave the Beam run: in memory from bundles in the driver's process,
through the staging folder from bundles in worker processes, both read back by the driver."""

from __future__ import annotations

import pickle

from pipelines.packed import Packed
from pipelines.runner import _CollectFn, _read_collected


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
