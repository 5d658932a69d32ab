"""Shared fixtures for the ray_jobs tests: real-data slices, a local training helper, Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ray_jobs.data import InteractionData, default_datasets_dir, load_dataset
from support import fit_in_process

DATASETS = default_datasets_dir()
REPO_ROOT = Path(__file__).resolve().parents[2]

# One intra-op thread: on a shared 2-core machine two spinning threads per test slow everything down.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def datasets_dir():
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(name="fit_local")
def fit_local_fixture():
    """The in-process training helper, as a fixture (test modules do not import conftest)."""
    return fit_in_process


@pytest.fixture(scope="session")
def gowalla_small(datasets_dir) -> InteractionData:
    return load_dataset("gowalla", datasets_dir, max_users=1500, seed=0)


@pytest.fixture(scope="session")
def youshu_small(datasets_dir) -> InteractionData:
    return load_dataset("youshu", datasets_dir, max_users=2000, seed=0)


@pytest.fixture(scope="module")
def ray_local():
    """A private 2-CPU local Ray instance for the module (reuses one a session fixture started)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def write_lake(root: Path, events: list[dict], start: int = 0, partition: int = 0, topic: str = "events") -> int:
    """Write contract events to an event lake at ``root`` as offsets ``start..`` of one partition,
    through the feature pipeline's own path (``parse_event`` -> ``ParsedRecord`` -> ``lake_row`` ->
    ``write_event_lake``); returns the rows written."""
    from features.events import parse_event
    from pipelines.kafka_source import KafkaOffsetRange
    from pipelines.lake import lake_row, write_event_lake
    from pipelines.records import ParsedRecord

    rows = [lake_row(ParsedRecord(partition, start + i, parse_event(e))) for i, e in enumerate(events)]
    return write_event_lake(root, [KafkaOffsetRange(topic, partition, start, start + len(events))], rows)


@pytest.fixture(name="write_lake")
def write_lake_fixture():
    """The lake writer helper, as a fixture (test modules do not import conftest)."""
    return write_lake


@pytest.fixture(scope="session")
def taobao_events(datasets_dir) -> list[dict]:
    """The real Taobao slice as contract events (what `streamrec replay` posts), event-time order."""
    from streamrec.replay import read_taobao_rows, taobao_events as to_events

    return to_events(read_taobao_rows(datasets_dir / "taobao_userbehavior_subset" / "UserBehavior_head.csv"))


@pytest.fixture(scope="session")
def taobao_lake(taobao_events, tmp_path_factory) -> Path:
    """An event lake holding the whole Taobao slice (84,287 events), written by the pipeline's writer."""
    root = tmp_path_factory.mktemp("lake") / "events"
    write_lake(root, taobao_events)
    return root
