"""`streamrec report [--run-dir DIR] [--out FILE]`; ``register(subparsers)`` adds it to ``streamrec``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = ["cmd_report", "register"]


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.report import build_report  # matplotlib is imported only when a report is built

    run_dir = Path(args.run_dir) if args.run_dir else settings.data.demo_dir
    out = build_report(run_dir, Path(args.out) if args.out else None)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB); open it in any browser, it needs no network")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand to the ``streamrec`` sub-parsers."""
    p = subparsers.add_parser("report", help="render a demo run directory as one self-contained HTML report")
    p.add_argument("--run-dir", help="the run directory (default: settings.data.demo_dir)")
    p.add_argument("--out", help="the HTML file (default: <run-dir>/report.html)")
    p.set_defaults(func=cmd_report)
