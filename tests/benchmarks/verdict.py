"""Verdicts of the benchmark scripts: each target met or MISSED, one table, and the exit code.

Every script that a ``make bench-*`` target runs records its targets here and returns what
:meth:`Verdict.report` returns, so a missed target fails the make target::

    parser = argparse.ArgumentParser()
    add_verdict_argument(parser)                         # --no-verdict, for exploration
    args = parser.parse_args()
    verdict = Verdict.from_args(args)
    verdict.check("collector p99", p99_ms, "<", 20, "ms", note="docstring")
    return verdict.report()                              # 0 met (or not enforced), 1 missed

A figure that could not be measured (``None`` or NaN, e.g. a ratio over a failed baseline) is
MISSED, never met: a broken run must not pass. Standard library only (the scripts import it before
anything heavy).
"""

from __future__ import annotations

import argparse
import math
import operator
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, TextIO

__all__ = ["Comparison", "NO_VERDICT_FLAG", "Target", "Verdict", "add_verdict_argument", "ratio"]

Comparison = Literal["<", "<=", "==", ">=", ">"]
NO_VERDICT_FLAG = "--no-verdict"

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, "==": operator.eq, ">=": operator.ge, ">": operator.gt,
}
_GLUED_UNITS = {"x", "%"}  # "0.33x", "9.6%"; any other unit after a space ("20 ms")


def _unmeasured(value: float | None) -> bool:
    return value is None or math.isnan(value)


def ratio(numerator: float | None, denominator: float | None) -> float:
    """``numerator / denominator``, or NaN (so: not measured, MISSED) when either side is missing
    or the denominator is 0."""
    if _unmeasured(numerator) or _unmeasured(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator  # type: ignore[operator]  # both checked above


def format_number(value: float | None) -> str:
    """Short and unambiguous: integers as such, 4 significant digits below 1,000, thousands
    separated above; "n/a" when not measured."""
    if _unmeasured(value):
        return "n/a"
    assert value is not None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if float(value).is_integer() or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _with_unit(text: str, unit: str) -> str:
    if not unit or text == "n/a":
        return text
    return f"{text}{unit}" if unit in _GLUED_UNITS else f"{text} {unit}"


@dataclass(frozen=True)
class Target:
    """One stated target and the figure measured against it: ``measured <comparison> threshold``.

    ``threshold`` may itself be measured in the same run (a baseline); missing, it makes the target
    MISSED as well. ``note`` says where the target comes from or what the figure counts.
    """

    name: str
    measured: float | None
    comparison: Comparison
    threshold: float | None
    unit: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        # A mistyped comparison must fail loudly, not compare as something else.
        if self.comparison not in _COMPARE:
            raise ValueError(f"{self.name}: comparison {self.comparison!r} is not one of {sorted(_COMPARE)}")

    @property
    def unmeasured_reason(self) -> str | None:
        """Why the comparison cannot be made; None when it can."""
        if _unmeasured(self.measured):
            return "not measured"
        if _unmeasured(self.threshold):
            return "threshold not measured"
        return None

    @property
    def met(self) -> bool:
        if self.unmeasured_reason is not None:
            return False
        return _COMPARE[self.comparison](self.measured, self.threshold)  # type: ignore[arg-type]

    def outcome(self) -> str:
        """The verdict cell: "met", "MISSED" or "MISSED (<why it could not be compared>)"."""
        if self.met:
            return "met"
        reason = self.unmeasured_reason
        return f"MISSED ({reason})" if reason else "MISSED"

    def cells(self) -> tuple[str, str, str, str, str]:
        """figure, measured, target, verdict, note: one row of the table."""
        target = f"{self.comparison} {_with_unit(format_number(self.threshold), self.unit)}"
        return self.name, _with_unit(format_number(self.measured), self.unit), target, self.outcome(), self.note

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "measured": self.measured, "comparison": self.comparison,
                "threshold": self.threshold, "unit": self.unit, "note": self.note, "met": self.met,
                "outcome": self.outcome()}


@dataclass
class Verdict:
    """Collects the targets of one benchmark run; :meth:`report` prints them and gives the exit code.

    ``enforce`` False (``--no-verdict``) still prints every target but always exits 0.
    """

    enforce: bool = True
    targets: list[Target] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Verdict:
        """From the arguments of a parser that :func:`add_verdict_argument` extended."""
        return cls(enforce=not args.no_verdict)

    def add(self, target: Target) -> bool:
        """Record ``target``; True when it is met."""
        self.targets.append(target)
        return target.met

    def check(
        self, name: str, measured: float | None, comparison: Comparison, threshold: float | None,
        unit: str = "", note: str = "",
    ) -> bool:
        """Record ``measured <comparison> threshold`` under ``name``; True when it is met."""
        return self.add(Target(name, measured, comparison, threshold, unit, note))

    @property
    def missed(self) -> list[Target]:
        return [t for t in self.targets if not t.met]

    def summary_line(self) -> str:
        """The last line of the report."""
        if not self.targets:
            return "verdict: no targets: informational"
        outcome = "met" if not self.missed else f"MISSED ({'; '.join(t.name for t in self.missed)})"
        if not self.enforce:
            return f"verdict not enforced ({NO_VERDICT_FLAG}): {outcome}"
        return f"verdict: {outcome}"

    def exit_code(self) -> int:
        return 1 if self.enforce and self.missed else 0

    def report(self, out: TextIO | None = None) -> int:
        """Print the table of targets and the verdict line; return the process exit code
        (0: every target met, or not enforced, or none stated; 1: any missed)."""
        out = out or sys.stdout
        if self.targets:
            out.write("\n" + "\n".join(self._table()) + "\n")
        out.write(self.summary_line() + "\n")
        out.flush()
        return self.exit_code()

    def as_dict(self) -> dict[str, Any]:
        """For a results JSON: every target, its outcome and whether the verdict was enforced."""
        return {"enforced": self.enforce, "met": not self.missed, "missed": [t.name for t in self.missed],
                "targets": [t.as_dict() for t in self.targets]}

    def _table(self) -> list[str]:
        header = ("figure", "measured", "target", "verdict", "note")
        cells = [t.cells() for t in self.targets]
        # The note column only when some target has one.
        width = len(header) if any(row[-1] for row in cells) else len(header) - 1
        rows: list[tuple[str, ...]] = [row[:width] for row in [header, *cells]]
        widths = [max(len(row[i]) for row in rows) for i in range(width)]

        def line(row: tuple[str, ...]) -> str:
            return " | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()

        rule = "-+-".join("-" * w for w in widths)
        return [line(rows[0]), rule, *(line(row) for row in rows[1:])]


def add_verdict_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-verdict``: print the targets but exit 0 even when one is missed (exploration)."""
    parser.add_argument(
        NO_VERDICT_FLAG, dest="no_verdict", action="store_true",
        help="print met/MISSED per target but exit 0 even when one is missed (exploration)",
    )
