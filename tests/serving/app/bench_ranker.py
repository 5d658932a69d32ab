"""Latency of the sequential ranker step alone (one SASRec forward pass + candidate scoring + reasons),
as the ItemRanker replica runs it: CPU, one intra-op thread, ``torch.inference_mode``.

    .venv/bin/python tests/serving/app/bench_ranker.py [--candidates 60] [--repeats 500]

The model has SASRec's default size (``ray_jobs/models/sasrec.yaml``: d=50, 2 blocks, max_len=50) over
the Taobao catalogue (55,233 items); weights are random, which does not change the cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from ray_jobs.models.sasrec import SASRec, SASRecConfig
from serving.recommend.sequential import SequenceRanker

TAOBAO_ITEMS = 55_233


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", type=int, default=60)
    p.add_argument("--repeats", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = SASRecConfig.with_overrides({})
    net = SASRec(config, SimpleNamespace(n_items=TAOBAO_ITEMS)).eval()  # only the catalogue size is read
    ids = [str(i) for i in range(TAOBAO_ITEMS)]
    ranker = SequenceRanker(net, {raw: row for row, raw in enumerate(ids)})
    rng = np.random.default_rng(0)
    sequence = [ids[i] for i in rng.integers(0, TAOBAO_ITEMS, config.max_len)]
    candidates = [ids[i] for i in rng.choice(TAOBAO_ITEMS, args.candidates, replace=False)]
    for _ in range(20):
        ranker.rank(sequence, candidates)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ranker.rank(sequence, candidates)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f"rank(): {args.repeats} calls, {args.candidates} candidates, sequence {config.max_len}, "
          f"d={config.hidden_dim}, {config.n_blocks} blocks, 1 thread: p50 {statistics.median(times):.3f} ms, "
          f"p95 {times[int(0.95 * len(times))]:.3f} ms, min {times[0]:.3f} ms; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
