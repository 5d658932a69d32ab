"""The `streamrec` command line.

    streamrec up | down | status          the embedded stack (broker, Ray, Serve apps)
    streamrec topics create               create the Kafka topics (idempotent)
    streamrec replay taobao [--limit N]   post the Taobao slice through the collector
    streamrec demo                        the whole loop on the embedded defaults
    streamrec report [--run-dir DIR]      the demo run as one self-contained HTML report
    streamrec config show                 print the effective configuration
    streamrec schema export               write the event JSON Schema under features/schema/
    streamrec features apply              `feast apply` of the repository in features/
    streamrec pipeline run --once|--follow   Kafka -> Beam -> Feast + Parquet lake
    streamrec pipeline backfill --from DATE  recompute features from the lake
    streamrec pipeline training-set ...   point-in-time-correct training rows from Feast
    streamrec ope --policy P              off-policy estimate of a bandit policy on the logged impressions
    streamrec users delete USER_ID        remove a user everywhere (tombstone + purge)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from streamrec.runtime.config import Settings, get_settings, mask_secrets
from streamrec.runtime.logging_config import configure_logging


def _print_table(rows: dict[str, str]) -> None:
    width = max((len(k) for k in rows), default=0)
    for key, value in rows.items():
        print(f"  {key.ljust(width)}  {value}")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec import local_stack

    print("starting the embedded stack ...", flush=True)
    _print_table(local_stack.up(settings, with_serve=not args.no_serve))
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec import local_stack

    _print_table(local_stack.down(settings))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec import local_stack

    report = local_stack.status(settings)
    _print_table(report)
    return 0 if all("stopped" not in v and "NOT" not in v for v in report.values()) else 1


def cmd_topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.runtime.kafka import ensure_topics

    _print_table({t: f"{n} partitions" for t, n in ensure_topics(settings.kafka).items()})
    return 0


def cmd_replay_taobao(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.replay import read_taobao_rows, replay_events, taobao_events

    path = Path(args.file) if args.file else settings.data.taobao_csv
    events = taobao_events(read_taobao_rows(path))
    if args.limit:
        events = events[: args.limit]
    url = args.collector or settings.collector.base_url
    print(f"replaying {len(events)} Taobao events from {path} to {url} ...", flush=True)
    summary = asyncio.run(
        replay_events(
            events,
            url,
            settings.collector.auth_token.get_secret_value(),
            rate=args.rate,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
        )
    )
    print(summary.as_text())
    return 0 if summary.accepted + summary.rejected == len(events) else 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.demo import DemoOptions, run_demo

    opts = DemoOptions(
        history_limit=args.limit, shoppers=args.shoppers, steps_per_shopper=args.steps, train=not args.no_train,
        epochs=args.epochs, inject_faults=args.inject_faults, keep_running=args.keep_running, run_dir=args.run_dir,
        visits_per_s=args.visits_per_s, retrain_after=args.retrain_after,
    )
    return run_demo(settings, opts)


def cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    # SecretStr fields dump as '**********'; credentials inside plain strings are masked too.
    print(json.dumps(mask_secrets(settings.model_dump(mode="json")), indent=2))
    return 0


def cmd_schema_export(args: argparse.Namespace, settings: Settings) -> int:
    from features.schema import write_schema

    print(write_schema(Path(args.out) if args.out else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description="Streaming bundle recommender.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the embedded stack and create topics")
    up.add_argument("--no-serve", action="store_true", help="broker and topics only (no Ray / Serve)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=cmd_down)
    sub.add_parser("status", help="report the local services").set_defaults(func=cmd_status)

    topics = sub.add_parser("topics", help="Kafka topics").add_subparsers(dest="action", required=True)
    topics.add_parser("create", help="create the topics (idempotent)").set_defaults(func=cmd_topics_create)

    replay = sub.add_parser("replay", help="replay a real dataset through the collector")
    replay_sub = replay.add_subparsers(dest="dataset", required=True)
    taobao = replay_sub.add_parser("taobao", help="the Taobao UserBehavior slice")
    taobao.add_argument("--file", help="CSV path (default: the shared dataset)")
    taobao.add_argument("--limit", type=int, default=0, help="only the first N events in event-time order")
    taobao.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    taobao.add_argument("--batch-size", type=int, default=200)
    taobao.add_argument("--concurrency", type=int, default=4)
    taobao.add_argument("--collector", help="collector base URL (default: from the configuration)")
    taobao.set_defaults(func=cmd_replay_taobao)

    demo = sub.add_parser("demo", help="run the whole loop on the embedded defaults and print a summary")
    demo.add_argument("--limit", type=int, default=0, help="replay only the first N history events (0: all)")
    demo.add_argument("--shoppers", type=int, default=300,
                      help="simulated shoppers (0: every one of the 814 users with later events; about 9 visits/s on 2 cores)")
    demo.add_argument("--steps", type=int, default=6, help="visits per shopper (their next real events)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the lake configs' budget)")
    demo.add_argument("--no-train", action="store_true", help="skip training: serving stays on its cold-start fallbacks")
    demo.add_argument("--inject-faults", action="store_true",
                      help="kill the pipeline, a recommender replica and the bandit learner once each during the traffic")
    demo.add_argument("--run-dir", type=Path, default=None, help="where the run's files and report go (default: .streamrec/demo)")
    demo.add_argument("--keep-running", action="store_true", help="leave the stack up afterwards")
    demo.add_argument("--visits-per-s", type=float, default=6.0,  # DemoOptions.visits_per_s (why it is 6)
                      help="the shoppers' visits per second, all together (0: as fast as served)")
    demo.add_argument("--retrain-after", type=float, default=0.1,
                      help="retrain mid-traffic once this share of the shoppers' expected events reached the lake "
                           "(the loop's own trigger, `streamrec retrain --watch`; 0: no retrain)")
    demo.set_defaults(func=cmd_demo)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    config.add_parser("show", help="print the effective configuration").set_defaults(func=cmd_config_show)

    schema = sub.add_parser("schema", help="event schema").add_subparsers(dest="action", required=True)
    export = schema.add_parser("export", help="write the JSON Schema generated from features/events.py")
    export.add_argument("--out", help="file (default: features/schema/events.v1.json)")
    export.set_defaults(func=cmd_schema_export)

    from pipelines.cli import register as register_pipeline  # pipeline run|backfill|training-set, features apply

    register_pipeline(sub)
    from ray_jobs.cli import register as register_train
    register_train(sub)
    from serving.ope.cli import register as register_ope  # ope: off-policy evaluation of a bandit policy

    register_ope(sub)
    from streamrec.users_cli import register as register_users  # users delete

    register_users(sub)
    from streamrec.report.cli import register as register_report  # report [--run-dir] [--out]

    register_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        configure_logging(settings.logging)  # once, before any command logs
        return args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a CLI prints a clear line, not a traceback, for expected failures
        from streamrec.local_stack import StackError

        if isinstance(exc, (StackError, FileNotFoundError, ValueError)):
            print(f"streamrec: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
