"""Command line of the feature pipeline; ``register(subparsers)`` adds it to ``streamrec``.

    streamrec pipeline run (--once | --follow) [--max-batches N] [--max-records-per-partition N]
    streamrec pipeline run --streaming [--beam-arg=--runner=FlinkRunner ...]   (one unbounded job)
    streamrec pipeline backfill --from YYYY-MM-DD [--step-hours H]
    streamrec pipeline training-set --entities FILE --out FILE [--service ranking_v1]
    streamrec features apply

Every command takes the settings (``streamrec.runtime.config``) and returns an exit code. Until it is wired
into ``streamrec``, ``python -m pipelines.cli ...`` runs the same commands.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any, TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings


def batch_record(summary: Any) -> dict[str, Any]:
    """One micro-batch as a JSON line (``--summary-jsonl``; the demo report plots these)."""
    import time

    return {
        "t": time.time(), "records": summary.records, "valid": summary.valid, "duplicates": summary.duplicates,
        "dlq": sum(summary.dead_letters.values()), "dlq_reasons": dict(summary.dead_letters),
        "features_written": sum(summary.features_written.values()), "lag": summary.lag,
        "elapsed_s": round(summary.elapsed_s, 4),
    }


def _append_jsonl(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        import json

        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def cmd_pipeline_run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.runner import FeaturePipeline

    if args.streaming:
        from pipelines.streaming import run_streaming

        run_streaming(settings, args.beam_arg)
        return 0
    pipeline = FeaturePipeline(settings)
    server = None
    totals = {"events": 0, "features": 0, "dlq": 0, "duplicates": 0, "batches": 0}
    try:
        server = _serve_metrics(pipeline, settings)
        if args.once:
            summary = pipeline.run_once(max_records_per_partition=args.max_records_per_partition)
            print(f"pipeline: 1 batch: {summary.as_text()}", flush=True)
            if summary.records:
                _append_jsonl(args.summary_jsonl, batch_record(summary))
            return 0
        with tqdm(desc="micro-batches", unit="batch", file=sys.stderr, dynamic_ncols=True) as bar:

            def on_batch(summary) -> None:
                totals["batches"] += 1
                totals["events"] += summary.records
                totals["features"] += sum(summary.features_written.values())
                totals["dlq"] += sum(summary.dead_letters.values())
                totals["duplicates"] += summary.duplicates
                bar.update(1)
                _append_jsonl(args.summary_jsonl, batch_record(summary))
                bar.set_postfix(events=totals["events"], features=totals["features"], dlq=totals["dlq"], lag=summary.lag)
                if args.verbose:
                    tqdm.write(summary.as_text(), file=sys.stderr)

            pipeline.follow(max_batches=args.max_batches, stop_when_idle=args.until_idle, on_batch=on_batch)
        print(
            f"pipeline: {totals['batches']} batches, events in {totals['events']}, duplicates {totals['duplicates']}, "
            f"features written {totals['features']}, DLQ {totals['dlq']}, lag {pipeline.lag()} records",
            flush=True,
        )
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        pipeline.close()


def _serve_metrics(pipeline: Any, settings: Settings) -> Any:
    """The pipeline's Prometheus endpoint when ``pipeline.metrics_port`` is set (else None)."""
    if settings.pipeline.metrics_port is None:
        return None
    from pipelines.metrics import serve_metrics

    return serve_metrics(pipeline.metrics.registry, str(settings.pipeline.metrics_host), settings.pipeline.metrics_port)


def cmd_pipeline_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.backfill import backfill

    with tqdm(desc="backfill", unit="step", file=sys.stderr, dynamic_ncols=True) as bar:

        def on_step(i: int, n: int, written: dict[str, int]) -> None:
            bar.total = n
            bar.update(1)
            bar.set_postfix(features=sum(written.values()))

        result = backfill(settings, args.from_date, step_s=int(args.step_hours * 3600), on_step=on_step)
    print(
        f"backfill from {args.from_date}: events {result['events']}, steps {result['steps']}, "
        f"features written {sum(result['features_written'].values())} {result['features_written']}, "
        f"{result['elapsed_s']:.1f}s",
        flush=True,
    )
    return 0


def cmd_pipeline_training_set(args: argparse.Namespace, settings: Settings) -> int:
    import pandas as pd

    from pipelines.training import build_training_set, label_rows_from_lake

    if args.entities == "lake":
        rows = label_rows_from_lake(settings)
    elif args.entities.endswith(".csv"):
        rows = pd.read_csv(args.entities, dtype=str)
    else:
        rows = pd.read_parquet(args.entities)
    frame = build_training_set(settings, rows, args.service)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    print(f"training set: {len(frame)} rows x {frame.shape[1]} columns ({args.service}) -> {out}", flush=True)
    return 0


def cmd_features_apply(args: argparse.Namespace, settings: Settings) -> int:
    from features.repo import apply_feature_repo, feast_repo_dir

    store = apply_feature_repo(settings)
    views = [fv.name for fv in store.list_feature_views()]
    services = [fs.name for fs in store.list_feature_services()]
    print(
        f"feast: applied to {feast_repo_dir(settings)} (online {settings.feast.online_store}): "
        f"views {views}, services {services}",
        flush=True,
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``pipeline`` and ``features`` to a ``streamrec`` argparse subparsers object.

    Each leaf sets ``func(args, settings) -> int``, as the other streamrec commands do.
    """
    pipeline = subparsers.add_parser("pipeline", help="Kafka -> Beam -> Feast feature pipeline").add_subparsers(
        dest="action", required=True
    )
    run = pipeline.add_parser("run", help="micro-batches from the committed offsets to the end (--once) or forever (--follow)")
    mode = run.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="one batch up to the end offsets seen now")
    mode.add_argument("--follow", action="store_true", help="loop micro-batches until Ctrl-C / SIGTERM")
    mode.add_argument(
        "--streaming", action="store_true",
        help="submit ONE unbounded streaming job (pipelines.streaming) to the runner in pipeline.beam_args",
    )
    run.add_argument(
        "--beam-arg", action="append", default=[], metavar="OPTION",
        help="--streaming: an extra Beam option, e.g. --beam-arg=--runner=FlinkRunner (repeatable)",
    )
    run.add_argument("--max-batches", type=int, default=None, help="--follow: stop after N non-empty batches")
    run.add_argument("--until-idle", action="store_true", help="--follow: stop when a batch finds nothing new")
    run.add_argument("--max-records-per-partition", type=int, default=None)
    run.add_argument("-v", "--verbose", action="store_true", help="print every batch's summary")
    run.add_argument("--summary-jsonl", type=Path, default=None, help="append each non-empty batch's summary as a JSON line")
    run.set_defaults(func=cmd_pipeline_run)

    backfill = pipeline.add_parser("backfill", help="rebuild offline feature history from the event lake")
    backfill.add_argument("--from", dest="from_date", type=date.fromisoformat, required=True, help="YYYY-MM-DD (UTC)")
    backfill.add_argument("--step-hours", type=float, default=6.0, help="event time per step (one offline snapshot each)")
    backfill.set_defaults(func=cmd_pipeline_backfill)

    training = pipeline.add_parser("training-set", help="point-in-time-correct training set from Feast")
    training.add_argument(
        "--entities", required=True,
        help="CSV/Parquet with join keys + event_timestamp, or 'lake' (purchase/cart rows from the event lake)",
    )
    training.add_argument("--service", default="ranking_v1", help="feature service (retrieval_v1, ranking_v1, bundle_bandit_v1)")
    training.add_argument("--out", required=True, help="Parquet file to write")
    training.set_defaults(func=cmd_pipeline_training_set)

    features = subparsers.add_parser("features", help="Feast feature repository").add_subparsers(dest="action", required=True)
    features.add_parser("apply", help="register entities, views and services (idempotent)").set_defaults(func=cmd_features_apply)


def main(argv: list[str] | None = None) -> int:
    from streamrec.runtime.config import get_settings
    from streamrec.runtime.logging_config import configure_logging

    parser = argparse.ArgumentParser(prog="python -m pipelines.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.logging)
    return args.func(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())
