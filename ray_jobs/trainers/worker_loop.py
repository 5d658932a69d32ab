"""The Ray Train worker loop: train, validate, checkpoint every epoch, resume, stop early.

Ray touch points are marked ``[Ray]`` (as in Ray's torch_fashion_mnist example); the rest is plain
PyTorch. Run it through :func:`ray_jobs.trainers.launch.run_training` (a 1-worker TorchTrainer for
local runs).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from tqdm import tqdm

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models import build_model
from ray_jobs.registry.provenance import describe_data
from ray_jobs.trainers.batches import n_global_batches, pairwise_batches, sequence_batches
from ray_jobs.trainers.checkpointing import load_state, save_final, save_state
from ray_jobs.trainers.config import JobConfig
from ray_jobs.trainers.early_stopping import EarlyStopping
from ray_jobs.trainers.evaluate import evaluate
from ray_jobs.trainers.job_data import load_job_data

__all__ = ["train_loop_per_worker", "HISTORY_FILE"]

HISTORY_FILE = "history.json"  # per-epoch metrics (training curves) in every checkpoint


def _make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg: Any = model.config  # every model's typed config has lr and weight_decay
    betas = (0.9, getattr(cfg, "beta2", 0.999))
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


def _make_scheduler(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR | None:
    """The model's step decay of the learning rate (SR-GNN: x0.1 every 3 epochs), if its config has one."""
    cfg: Any = model.config
    every = getattr(cfg, "lr_decay_every", None)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=cfg.lr_decay) if every else None


def _epoch_batches(
    model: torch.nn.Module, data: InteractionData, job: JobConfig, epoch: int, rank: int, world: int, device
) -> tuple[Iterator[dict[str, torch.Tensor]], int, int]:
    """This worker's batches for ``epoch``, the number of global steps (for the progress bar) and
    the number of training samples in the epoch over all workers (for throughput)."""
    cfg: Any = model.config
    seed = job.train.seed
    if model.batch_kind == "sequence":
        n_windows = _n_sequence_windows(data, cfg.max_len, cfg.windows)
        batches = sequence_batches(
            data.train, data.n_users, data.n_items, cfg.max_len, cfg.batch_size, epoch, seed, rank, world, device,
            n_negatives=cfg.negatives_per_position(), windows=cfg.windows,
        )
        return batches, n_global_batches(n_windows, cfg.batch_size), n_windows
    batches = pairwise_batches(data.train, data.n_items, cfg.batch_size, epoch, seed, rank, world, device)
    return batches, n_global_batches(len(data.train), cfg.batch_size), len(data.train)


def _n_sequence_windows(data: InteractionData, max_len: int, windows: str) -> int:
    """How many windows :func:`sequence_windows` cuts from the training histories."""
    lengths = np.bincount(data.train[:, 0], minlength=data.n_users)
    trained = lengths[lengths >= 2]
    if windows == "prefixes":
        return int((trained - 1).sum())
    return int(len(trained) if windows == "last" else np.ceil((trained - 1) / max_len).sum())


def _global_mean(total: float, count: int, world: int, device) -> float:
    if world == 1:
        return total / max(count, 1)
    t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1].clamp(min=1))


def _report(metrics: dict[str, Any], rank: int, write) -> None:
    """[Ray] Report metrics from every worker; rank 0 attaches the checkpoint written by ``write``."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            write(Path(tmp))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _finish(core, data, job, rank, world, device, best_state, extra_metrics, write_state) -> None:
    """Evaluate the best weights on valid and test, then report them with the exported embeddings."""
    if best_state is not None:
        core.load_state_dict(best_state)
    metrics: dict[str, Any] = dict(extra_metrics)
    for split in ("valid", "test"):
        metrics.update(evaluate(core, data, split, job.train, rank, world, device).flat())
    metrics["done"] = True

    def write(d: Path) -> None:
        write_state(d)
        core.eval()
        save_final(d, core.export_embeddings(), metrics, describe_data(data))

    _report(metrics, rank, write)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point run by every Ray Train worker. ``config`` is a dumped :class:`JobConfig`."""
    job = JobConfig(**config)
    ctx = ray.train.get_context()  # [Ray] worker identity
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # [Ray] cuda:<local rank> with use_gpu, else cpu
    data = load_job_data(job)
    torch.manual_seed(job.train.seed)  # same initial weights on every worker
    core: Any = build_model(job.model, data, job.model_params).to(device)  # a models.base.Recommender

    if core.batch_kind == "none":  # nothing to fit (popularity): evaluate and report once
        _finish(core, data, job, rank, world, device, None, {"epoch": 0}, lambda d: None)
        return

    optimizer = _make_optimizer(core)
    scheduler = _make_scheduler(core, optimizer)
    stopper = EarlyStopping(job.train.patience)
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()  # [Ray] set when resuming after a failure
    if checkpoint:
        with checkpoint.as_directory() as d:
            state, best_state = load_state(Path(d))
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stopper = EarlyStopping.from_state_dict(state["stopper"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
    resumed_from = start_epoch
    history: list[dict[str, Any]] = []  # per-epoch scalar metrics, shipped in every checkpoint
    if checkpoint:
        with checkpoint.as_directory() as d:
            if (Path(d) / HISTORY_FILE).exists():
                history = [h for h in json.loads((Path(d) / HISTORY_FILE).read_text()) if h["epoch"] < start_epoch]

    # [Ray] Wrap in DDP (gloo on CPU, NCCL on GPU). Graph buffers are data, identical everywhere.
    model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"broadcast_buffers": False})

    def write_state(d: Path) -> None:
        save_state(d, core.state_dict(), optimizer.state_dict(), best_state, epoch,
                   {"stopper": stopper.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None})
        (d / HISTORY_FILE).write_text(json.dumps(history))

    epoch = start_epoch - 1
    report_s: float | None = None  # how long the last report (checkpoint upload + queue wait) took
    while epoch + 1 < job.train.epochs and not stopper.should_stop:
        epoch += 1
        core.on_epoch_start(epoch)
        model.train()
        batches, n_batches, n_samples = _epoch_batches(core, data, job, epoch, rank, world, device)
        total, count = 0.0, 0
        started, thread_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
        for step, batch in enumerate(tqdm(batches, total=n_batches, desc=f"epoch {epoch}",
                                          disable=rank != 0 or not job.train.progress, mininterval=5)):
            if step == n_batches // 2:
                _maybe_inject_failure(job, epoch, rank)
            loss = model(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        train_s = time.perf_counter() - started  # batches + forward/backward/step, no evaluation
        if scheduler is not None:
            scheduler.step()
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": _global_mean(total, count, world, device),
                                   "resumed_from_epoch": resumed_from, "train_time_s": train_s,
                                   "train_samples": n_samples, "train_samples_per_s": n_samples / train_s,
                                   # CPU seconds of this thread / the whole worker process (Ray's own
                                   # threads included): on a shared machine wall time also counts the
                                   # time spent waiting for a core, these do not.
                                   "train_thread_cpu_s": time.thread_time() - thread_cpu,
                                   "train_process_cpu_s": time.process_time() - process_cpu,
                                   "torch_threads": torch.get_num_threads(), "last_report_s": report_s}
        is_last = epoch == job.train.epochs - 1
        if (epoch + 1) % job.train.eval_every == 0 or is_last:
            report = evaluate(core, data, "valid", job.train, rank, world, device)
            metrics.update(report.flat())
            if stopper.update(report.metrics[job.train.monitor], epoch):
                best_state = copy.deepcopy(core.state_dict())
        metrics.update({"best_epoch": stopper.best_epoch,
                        "best_valid": stopper.best if stopper.best_epoch >= 0 else None})
        history.append({k: v for k, v in metrics.items() if isinstance(v, (bool, int, float)) and v is not None})
        # [Ray] Report with a resumable checkpoint every `checkpoint_every` epochs (every epoch's
        # metrics are in `history`). A report blocks until the Train controller has taken the previous
        # one, and it polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): reporting after each
        # sub-second epoch would make an epoch take >= 2 s.
        if (epoch + 1) % job.train.checkpoint_every == 0 or is_last:
            reported = time.perf_counter()
            _report(metrics, rank, write_state)
            report_s = time.perf_counter() - reported

    _finish(core, data, job, rank, world, device, best_state,
            {"epoch": epoch, "best_epoch": stopper.best_epoch, "resumed_from_epoch": resumed_from,
             "stopped_early": stopper.should_stop}, write_state)


def _maybe_inject_failure(job: JobConfig, epoch: int, rank: int) -> None:
    """Test hook: hard-kill rank 0 once, halfway through epoch ``fail_once_at_epoch``."""
    t = job.train
    if t.fail_once_at_epoch != epoch or rank != 0 or t.fail_marker is None:
        return
    marker = Path(t.fail_marker)
    if marker.exists():
        return
    marker.write_text(f"killed during epoch {epoch}\n")
    os._exit(1)  # no cleanup, like an OOM kill or a lost node
