"""`streamrec train`: parser, Ray address / registry / name resolution, and one real run through
the CLI function into the registry root the recommender reads, under the name it loads."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from ray_jobs.cli import MODEL_NAMES, cmd_train, registry_name, resolve_ray_address
from ray_jobs.data import load_dataset, subsample_users
from ray_jobs.models import MODELS
from ray_jobs.registry import ModelRegistry
from streamrec.cli import build_parser
from support import free_port, make_settings


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "state", free_port(), ray={"head_port": free_port()})


def test_model_names_match_the_registry_of_models():
    assert MODEL_NAMES == tuple(sorted(MODELS))


def test_parser_has_train_with_the_documented_options():
    args = build_parser().parse_args([
        "train", "lightgcn", "--config", "c.yaml", "--num-workers", "2", "--use-gpu", "--epochs", "3",
        "--registry", "s3://b/m", "--datasets-dir", "/d",
    ])
    assert args.func is cmd_train
    assert (args.model, str(args.config), args.num_workers, args.use_gpu, args.epochs, args.registry,
            args.datasets_dir) == ("lightgcn", "c.yaml", 2, True, 3, "s3://b/m", "/d")


def test_registry_name_follows_what_serving_loads(settings):
    s = settings.serving
    assert registry_name("lightgcn", "taobao", "lightgcn_taobao", settings) == s.item_model
    assert registry_name("lightgcn", "gowalla", "lightgcn_gowalla", settings) == "lightgcn_gowalla"
    assert registry_name("crosscbr", "youshu", "crosscbr_youshu", settings) == "crosscbr_youshu"
    assert registry_name("crosscbr", "youshu", "crosscbr_youshu", settings, serve_as="bundle") == s.bundle_model
    assert registry_name("lightgcn", "taobao", "x", settings, serve_as="none") == "x"
    assert registry_name("lightgcn", "taobao", "x", settings, name="mine") == "mine"


def test_ray_address_joins_the_local_head_only_when_it_runs(settings):
    assert resolve_ray_address(settings) is None  # nothing listens on head_port: private instance
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", settings.ray.head_port))
        sock.listen()
        assert resolve_ray_address(settings) == f"127.0.0.1:{settings.ray.head_port}"
        assert resolve_ray_address(settings, private=True) is None
    configured = settings.model_copy(update={"ray": settings.ray.model_copy(update={"address": "ray://h:10001"})})
    assert resolve_ray_address(configured) == "ray://h:10001"


def test_taobao_raw_ids_survive_slicing(datasets_dir):
    data = load_dataset("taobao", datasets_dir)
    assert data.user_ids is not None and len(data.user_ids) == data.n_users
    assert len(data.item_ids) == data.n_items and data.user_ids[0] == 1  # first CSV user is "1"
    small = subsample_users(data, 50, seed=0)
    assert len(small.user_ids) == 50 and set(small.user_ids) <= set(data.user_ids)
    assert np.array_equal(small.item_ids, data.item_ids)  # sequential data keeps the item space


def test_cmd_train_wiring(settings, monkeypatch, capsys):
    """Defaults: the recommender's registry root and item-model name, the settings' datasets dir,
    a private Ray (no head runs on head_port); options pass through to the launcher."""
    import ray_jobs.train as launcher

    seen: list = []
    monkeypatch.setattr(launcher, "run", lambda run, settings: seen.append(run) or 0)
    args = build_parser().parse_args(["train", "lightgcn", "--config", "ray_jobs/configs/lightgcn_taobao.yaml",
                                      "--num-workers", "2", "--use-gpu", "--epochs", "3"])
    assert cmd_train(args, settings) == 0
    run = seen[0]
    assert run.model == "lightgcn" and run.use_gpu and run.address is None
    assert run.registry == str(settings.data.state_dir / "registry")
    assert run.name == settings.serving.item_model
    assert run.datasets_dir == str(settings.data.datasets_dir)
    assert (run.num_workers, run.epochs) == (2, 3)
    assert "serving.item_model" in capsys.readouterr().out
    custom = settings.model_copy(update={"serving": settings.serving.model_copy(update={"registry_root": "/r"})})
    args = build_parser().parse_args(["train", "crosscbr", "--registry", "/x"])
    cmd_train(args, custom)
    assert seen[1].registry == "/x" and seen[1].name == "crosscbr_youshu"
    assert "not 'crosscbr_youshu'" in capsys.readouterr().out  # says serving will not load it
    cmd_train(build_parser().parse_args(["train", "bprmf"]), custom)
    assert seen[2].registry == "/r"  # serving.registry_root


def test_registered_raw_ids_reach_serving(tmp_path):
    candidates = pytest.importorskip("serving.app.embeddings")
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    ModelRegistry(tmp_path).register("lightgcn", embeddings={"item": emb}, metrics={}, config={},
                                     data_snapshot_id="sha256:x", extra={"ids": {"item": ["a", "b", "c"]}})
    table = candidates.load_embeddings(tmp_path, "lightgcn", "item")
    assert table.row_of == {"a": 0, "b": 1, "c": 2} and np.array_equal(table.matrix, emb)
    with pytest.raises(ValueError, match="reserved"):
        ModelRegistry(tmp_path).register("m", embeddings={}, metrics={}, config={}, data_snapshot_id="s",
                                         extra={"metrics": {}})


@pytest.mark.ray
@pytest.mark.slow
def test_streamrec_train_publishes_where_serving_reads(ray_local, datasets_dir, settings, tmp_path, capsys):
    args = build_parser().parse_args([
        "train", "lightgcn", "--config", "ray_jobs/configs/lightgcn_taobao.yaml", "--epochs", "1",
        "--max-users", "150", "--datasets-dir", str(datasets_dir), "--storage-path", str(tmp_path / "rr"),
    ])
    assert cmd_train(args, settings) == 0
    out = capsys.readouterr().out
    assert "serving.item_model" in out
    root = settings.data.state_dir / "registry"  # the recommender's default root
    model = ModelRegistry(root).load_latest(settings.serving.item_model)
    ids = model.manifest["ids"]
    assert len(ids["item"]) == model.embeddings["item"].shape[0] and len(ids["user"]) == 150
    assert model.manifest["model"] == "lightgcn" and model.manifest["dataset"] == "taobao"
    candidates = pytest.importorskip("serving.app.embeddings")
    table = candidates.load_embeddings(root, settings.serving.item_model, "item")
    assert table is not None and table.ids == ids["item"] and "2268318" in table.row_of  # raw Taobao id
