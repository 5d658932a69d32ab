"""Model registry: round trip, atomic LATEST pointer, URIs, provenance."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ray_jobs.registry import EMBEDDING_COLUMN, ID_COLUMN, ModelRegistry, code_version, data_snapshot_id


def _register(reg: ModelRegistry, name: str, tmp_path, scale: float = 1.0) -> tuple[str, dict]:
    weights = tmp_path / f"w{scale}.pt"
    torch.save({"w": torch.full((2, 2), scale)}, weights)
    emb = {"item": np.arange(12, dtype=np.float32).reshape(4, 3) * scale, "user": np.ones((2, 3), np.float32)}
    version = reg.register(
        name,
        embeddings=emb,
        metrics={"test/recall@20": 0.1 * scale, "test/protocol": "full ranking"},
        config={"model": "bprmf", "train": {"epochs": 3}},
        data_snapshot_id="sha256:abc",
        code_version="deadbeef",
        weights_file=weights,
    )
    return version, emb


def test_round_trip(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    version, emb = _register(reg, "bprmf_gowalla", tmp_path)
    loaded = reg.load_latest("bprmf_gowalla")
    assert loaded.version == version
    np.testing.assert_array_equal(loaded.embeddings["item"], emb["item"])
    assert loaded.manifest["data_snapshot_id"] == "sha256:abc" and loaded.manifest["code_version"] == "deadbeef"
    assert loaded.manifest["metrics"]["test/protocol"] == "full ranking"
    assert loaded.config == {"model": "bprmf", "train": {"epochs": 3}}
    torch.testing.assert_close(loaded.state_dict()["w"], torch.ones(2, 2))
    table = pq.read_table(tmp_path / "reg" / "bprmf_gowalla" / "versions" / version / "embeddings" / "item.parquet")
    assert table.column(ID_COLUMN).to_pylist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.array(table.column(EMBEDDING_COLUMN).to_pylist()), emb["item"])


def test_latest_moves_and_old_versions_stay(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    v1, _ = _register(reg, "m", tmp_path, 1.0)
    v2, _ = _register(reg, "m", tmp_path, 2.0)
    assert v1 < v2 and reg.list_versions("m") == [v1, v2]
    assert reg.latest_version("m") == v2
    assert reg.load("m", v1).manifest["metrics"]["test/recall@20"] == pytest.approx(0.1)
    reg.set_latest("m", v1)  # roll back
    assert reg.load_latest("m").version == v1
    with pytest.raises(FileNotFoundError):
        reg.set_latest("m", "no-such-version")
    leftovers = [p.name for p in (tmp_path / "m").iterdir()]
    assert sorted(leftovers) == ["LATEST", "versions"]  # no temp files left behind


def test_latest_is_never_partial(tmp_path):
    """Readers polling LATEST during many pointer moves always see a complete version id."""
    reg = ModelRegistry(tmp_path)
    versions = [_register(reg, "m", tmp_path, float(i))[0] for i in range(3)]
    stop = threading.Event()
    seen: set[str] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add((tmp_path / "m" / "LATEST").read_text())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        reg.set_latest("m", versions[i % 3])
    stop.set()
    reader.join()
    assert seen <= set(versions)


def test_uri_filesystem(tmp_path):
    reg = ModelRegistry(f"file://{tmp_path}/uri_reg")
    version, emb = _register(reg, "m", tmp_path)
    assert ModelRegistry(tmp_path / "uri_reg").load_latest("m").version == version


def test_missing_and_invalid(tmp_path):
    reg = ModelRegistry(tmp_path)
    with pytest.raises(FileNotFoundError):
        reg.load_latest("nothing")
    with pytest.raises(ValueError):
        reg.latest_version("../escape")
    assert reg.list_versions("nothing") == []


def test_provenance(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("1 2\n")
    b.write_text("3 4\n")
    sid = data_snapshot_id([a, b])
    assert sid == data_snapshot_id([b, a]) and sid.startswith("sha256:")
    b.write_text("3 5\n")
    assert data_snapshot_id([a, b]) != sid
    assert isinstance(code_version(tmp_path), str)  # "unknown" outside a git checkout
    assert code_version(tmp_path) == "unknown"


def test_artefacts_round_trip_and_names_are_checked(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    version = reg.register("sasrec", embeddings={"item": np.ones((2, 3), np.float32)}, metrics={}, config={},
                           data_snapshot_id="s", artefacts={"user_encoder.pt2": b"\x00program"})
    loaded = reg.load("sasrec", version)
    assert loaded.artefacts == {"user_encoder.pt2": b"\x00program"}
    assert "artefacts/user_encoder.pt2" in loaded.manifest["files"]
    assert (tmp_path / "reg" / "sasrec" / "versions" / version / "artefacts" / "user_encoder.pt2").read_bytes() == b"\x00program"
    assert _register(reg, "bprmf", tmp_path)[0] and reg.load_latest("bprmf").artefacts == {}
    for bad in ("../escape.pt2", "a/b", ""):
        with pytest.raises(ValueError, match="invalid artefact name"):
            reg.register("sasrec", embeddings={}, metrics={}, config={}, data_snapshot_id="s", artefacts={bad: b"x"})
    assert reg.latest_version("sasrec") == version  # a refused registration moves nothing


def test_model_names_are_the_models_with_a_latest_version(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.model_names() == []
    _register(reg, "lightgcn", tmp_path)
    _register(reg, "bprmf", tmp_path)
    reg.register("unserved", embeddings={}, metrics={}, config={}, data_snapshot_id="s", set_latest=False)
    assert reg.model_names() == ["bprmf", "lightgcn"]
    assert ModelRegistry((tmp_path / "reg").as_uri()).model_names() == ["bprmf", "lightgcn"]
