"""`streamrec train`: the Ray Train launcher (``python -m ray_jobs.train``) on the local stack.

    streamrec train <model> --config <yaml> [--num-workers N] [--use-gpu] [--epochs N]
                    [--registry URI] [--datasets-dir DIR] [--name NAME]
                    [--serve-as item|bundle|ranker|none] [--until TIME] [--lake-root PATH|URI]

* Ray: joins ``settings.ray.address`` when set, else the local head that ``streamrec up`` runs
  (``settings.ray.host``:``settings.ray.head_port``, with the stack's token from
  ``streamrec.local_stack.ray_client_env``), else starts a private Ray instance for the run.
* Registry: ``--registry``, else the root the recommender reads (``settings.registry_root``:
  ``serving.registry_root``, else ``data.state_dir / "registry"``).
* Name: ``--name``; else, with ``--serve-as item`` (the default for bprmf / lightgcn trained on a
  served catalogue: ``taobao`` or the event ``lake``, whose raw ids the recommender sees)
  ``settings.serving.item_model``; ``--serve-as ranker`` (the default for sasrec on a served
  catalogue): ``settings.serving.ranker_model``; ``--serve-as bundle`` (the default for crosscbr on
  ``lake_bundles``, the bundles mined from the lake): ``settings.serving.bundle_model``; otherwise the
  job's name (e.g. ``lightgcn_gowalla``), which the recommender does not load.
* Event lake (datasets ``lake``, ``lake_bundles``): the root defaults to the one the feature pipeline
  writes for these settings (``--lake-root`` overrides); ``--until`` trains point-in-time on events up
  to that time.

Registered with ``streamrec.cli.build_parser`` via :func:`register`.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = ["MODEL_NAMES", "add_training_arguments", "cmd_train", "register", "registry_name", "resolve_ray_address"]

# Kept literal so that building the CLI parser does not import torch (tested against MODELS).
MODEL_NAMES = ("bprmf", "crosscbr", "gcegnn", "lightgcn", "popularity", "sasrec", "srgnn")
# Datasets whose raw ids are the ones the recommender sees (registered with the embeddings).
SERVED_CATALOGUES = ("taobao", "lake", "lake_bundles")
_LAKE_DATASETS = ("lake", "lake_bundles")  # ray_jobs.data.catalog.LAKE_DATASETS, literal (no torch import)
_ITEM_EMBEDDING_MODELS = ("bprmf", "lightgcn")
_SEQUENTIAL_RANKERS = ("gcegnn", "sasrec", "srgnn")
_BUNDLE_MODELS = ("crosscbr",)


def add_training_arguments(p: argparse.ArgumentParser, models: Sequence[str]) -> None:
    """The flags of a training run, shared by `streamrec train` and ``python -m ray_jobs.train``
    (one parser: the shell command fills in what the launcher would otherwise need spelled out)."""
    p.add_argument("model", choices=models)
    p.add_argument("--config", type=Path, help="job YAML (default: the model's config in ray_jobs/configs/)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (DDP ranks)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--max-users", type=int, help="train on a random slice of this many users")
    p.add_argument("--max-failures", type=int, help="worker-group restarts allowed (Ray FailureConfig)")
    p.add_argument("--registry", help="registry root, path or URI, to publish to (`streamrec train`: default "
                                      "the one serving reads)")
    p.add_argument("--datasets-dir", help="shared datasets folder (`streamrec train`: default settings.data.datasets_dir)")
    p.add_argument("--storage-path", help="Ray Train checkpoint storage, path or URI (default: ~/ray_results)")
    p.add_argument("--name", help="run / registry name (default: from the config; `streamrec train`: see --serve-as)")
    p.add_argument("--until", help="lake datasets: train on events with event time <= this ISO 8601 time "
                                   "(UTC without an offset; default: everything in the lake at launch)")
    p.add_argument("--lake-root", help="lake datasets: lake root, path or URI (default: the feature "
                                       "pipeline's, under settings.data.state_dir)")


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand to the ``streamrec`` sub-parsers."""
    p = subparsers.add_parser("train", help="train a model with Ray Train and publish it to the registry")
    add_training_arguments(p, MODEL_NAMES)
    p.add_argument("--serve-as", choices=("item", "bundle", "ranker", "none"),
                   help="publish under the serving model name (settings.serving.item_model / bundle_model / "
                        "ranker_model)")
    p.add_argument("--private-ray", action="store_true", help="do not join a running local head")
    p.set_defaults(func=cmd_train)
    r = subparsers.add_parser("retrain", help="retrain the served models on the lake when enough new events arrived "
                                              "(submitted as Ray jobs; serving hot-loads them)")
    r.add_argument("--watch", action="store_true", help="keep checking every retrain.check_interval_s")
    r.add_argument("--force", action="store_true", help="retrain now, whatever the trigger says")
    r.add_argument("--max-retrains", type=int, default=None, help="--watch: exit after this many retrains")
    r.set_defaults(func=cmd_retrain)


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    """One check of the retrain trigger (``ray_jobs.retrain``), or a watch loop of them."""
    from ray_jobs.retrain import run_retrain

    retrains = 0
    while True:
        decision = run_retrain(settings, force=args.force)
        retrains += decision.due
        if not args.watch:
            if not decision.due:
                print(f"no retrain due: {decision.reason}")
            return 0
        if args.max_retrains is not None and retrains >= args.max_retrains:
            return 0
        args.force = False
        time.sleep(settings.retrain.check_interval_s)


def resolve_ray_address(settings: Settings, private: bool = False) -> str | None:
    """The cluster to join: configured address, else the running local head, else None (private)."""
    if private:
        return None
    if settings.ray.address:
        return settings.ray.address
    from streamrec.runtime.ray_access import ray_head_running

    if ray_head_running(settings):
        return f"{settings.ray.host}:{settings.ray.head_port}"
    return None


def registry_name(model: str, dataset: str, job_name: str, settings: Settings,
                  name: str | None = None, serve_as: str | None = None) -> str:
    """The name a run is registered under (see the module docstring)."""
    if name:
        return name
    if serve_as is None:
        serve_as = _default_serve_as(model, dataset)
    if serve_as == "item":
        return settings.serving.item_model
    if serve_as == "bundle":
        return settings.serving.bundle_model
    if serve_as == "ranker":
        return settings.serving.ranker_model
    return job_name


def _default_serve_as(model: str, dataset: str) -> str:
    if dataset not in SERVED_CATALOGUES:
        return "none"  # integer ids of a benchmark dataset match nothing the recommender serves
    if dataset == "lake_bundles":  # the rows are mined bundles, registered with their item lists
        return "bundle" if model in _BUNDLE_MODELS else "none"
    if model in _SEQUENTIAL_RANKERS:
        return "ranker"
    return "item" if model in _ITEM_EMBEDDING_MODELS else "none"


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    import yaml

    address = resolve_ray_address(settings, args.private_ray)
    if address and not settings.ray.address:
        # The embedded head: its token and, on loopback, Ray's single-machine mode for this driver.
        # Before Ray is imported (below): Ray reads the single-machine switch once, at import.
        from streamrec.runtime.ray_access import ray_client_env

        os.environ.update(ray_client_env(settings))
    from ray_jobs import train as launcher
    from ray_jobs.data.lake import lake_root_of

    config = args.config or launcher.CONFIG_DIR / launcher.DEFAULT_CONFIGS[args.model]
    raw = yaml.safe_load(Path(config).read_text()) or {}
    registry = args.registry or settings.registry_root
    dataset = raw.get("dataset", {})
    name = registry_name(args.model, dataset.get("name", ""), raw.get("name", args.model),
                         settings, args.name, args.serve_as)
    lake_root = args.lake_root
    if dataset.get("name") in _LAKE_DATASETS and lake_root is None and not dataset.get("options", {}).get("root"):
        lake_root = str(lake_root_of(settings))  # these settings' lake, not the process-wide default
    run = argparse.Namespace(**{**vars(args), "config": Path(config), "registry": registry, "name": name,
                                "datasets_dir": str(args.datasets_dir or settings.data.datasets_dir),
                                "address": address, "lake_root": lake_root})
    print(f"training {args.model} ({config}) on {'Ray at ' + address if address else 'a private Ray instance'}; "
          f"registry {registry} as {name!r}", flush=True)
    rc = launcher.run(run, settings)
    served = {settings.serving.item_model: "item_model", settings.serving.bundle_model: "bundle_model",
              settings.serving.ranker_model: "ranker_model"}
    if name in served:
        print(f"the recommender loads it as serving.{served[name]} (refresh every {settings.serving.refresh_s}s)")
    else:
        print(f"note: the recommender loads {settings.serving.item_model!r} / {settings.serving.bundle_model!r} / "
              f"{settings.serving.ranker_model!r}, not {name!r} (use --serve-as or --name to publish for serving)")
    return rc
