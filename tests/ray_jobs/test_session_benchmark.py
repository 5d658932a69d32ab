"""A session benchmark folder read by configuration alone: the given split and cases are kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_jobs.data import load_dataset
from ray_jobs.data.dataset import InteractionData
from ray_jobs.evaluation.session import SESSION_PROTOCOL
from ray_jobs.models.base import USER
from ray_jobs.trainers.config import TrainConfig
from ray_jobs.trainers.evaluate import evaluate, held_out_sessions

HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token\n"


def _write(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.write_text(HEADER + "".join(f"{s}\t{p}\t{t}\n" for s, p, t in rows))


@pytest.fixture
def recbole_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir()
    # Training rows are the augmented prefixes of sessions s1 = a b c and s2 = b d.
    _write(folder / "bench.train.inter", [("s1", "a", "b"), ("s1", "a b", "c"), ("s2", "b", "d")])
    _write(folder / "bench.valid.inter", [("s3", "c", "a")])
    # Test lists only the cases it wants: not every prefix (e.g. no "e -> a").
    _write(folder / "bench.test.inter", [("s4", "e a", "b"), ("s5", "d", "e")])
    return folder


def test_recbole_session_files_keep_their_split_and_cases(recbole_folder: Path) -> None:
    # As a job YAML's dataset.options reach it (file_prefix: the files' name when not the folder's).
    data = load_dataset("session_benchmark", folder=str(recbole_folder), file_prefix="bench", format="recbole")
    assert isinstance(data, InteractionData) and data.item_ids.tolist() == ["a", "b", "c", "d", "e"]
    a, b, c, d, e = range(5)
    histories = [data.train[data.train[:, 0] == u, 1].tolist() for u in np.unique(data.train[:, 0])]
    assert histories == [[a, b, c], [b, d]]  # each session's longest row with its target, once
    test = held_out_sessions(data, "test")
    assert [test.prefix(i).tolist() for i in range(len(test))] == [[e, a], [d]]
    assert test.targets.tolist() == [b, e]  # exactly the file's rows: no re-augmentation
    valid = held_out_sessions(data, "valid")
    assert len(valid) == 1 and valid.prefix(0).tolist() == [c] and valid.targets.tolist() == [a]


class _Popular:
    """Scores items by fixed popularity for everyone (what the popularity baseline does)."""

    batch_kind = "none"
    training = False

    def __init__(self, scores: list[float]) -> None:
        import torch

        self.s = torch.tensor(scores)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def score(self, batch):
        return self.s.expand(len(batch[USER]), -1).clone()


def test_session_protocol_on_the_given_test_cases(recbole_folder: Path) -> None:
    data = load_dataset("session_benchmark", folder=str(recbole_folder), format="recbole")
    model = _Popular([1.0, 5.0, 2.0, 3.0, 4.0])  # ranking: b, e, d, c, a
    report = evaluate(model, data, "test", TrainConfig(protocol="session", ks=[1, 2], monitor="mrr@2"))
    assert report.protocol == SESSION_PROTOCOL and report.n_users == 2
    # case "e a -> b": b first (rank 1); case "d -> e": e second (rank 2)
    assert report.metrics["p@1"] == pytest.approx(0.5) and report.metrics["p@2"] == pytest.approx(1.0)
    assert report.metrics["mrr@2"] == pytest.approx(0.75)


def test_txt_sequences_last_id_is_the_target_and_validation_is_drawn(tmp_path: Path) -> None:
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "train.txt").write_text("".join(f"{i} {i + 1} {i + 2}\n" for i in range(1, 21)) + "7\n")
    (folder / "test.txt").write_text("3 4 5\n9 30\n")
    data = load_dataset("session_benchmark", folder=str(folder), format="txt", valid_share=0.1, seed=0)
    assert data.item_ids.tolist() == list(range(1, 23)) + [30]
    sessions = np.unique(data.train[:, 0])
    assert len(sessions) == 18  # 20 sessions of length 3, 10% held out; the length-1 line dropped
    valid = held_out_sessions(data, "valid")
    assert len(valid) == 2 * 2  # two held-out sessions, two prefixes each
    test = held_out_sessions(data, "test")
    row = {raw: i for i, raw in enumerate(data.item_ids.tolist())}
    assert [test.prefix(i).tolist() for i in range(len(test))] == [[row[3], row[4]], [row[9]]]
    assert test.targets.tolist() == [row[5], row[30]]  # 30 never trained, still rankable
    again = load_dataset("session_benchmark", folder=str(folder), format="txt", valid_share=0.1, seed=0)
    assert np.array_equal(again.valid, data.valid)


def test_a_folder_without_its_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.inter"):
        load_dataset("session_benchmark", folder=str(tmp_path), format="recbole")
    with pytest.raises(ValueError, match="format"):
        load_dataset("session_benchmark", folder=str(tmp_path), format="csv")
