"""The shared verdict of the benchmark scripts (tests/benchmarks/verdict.py): met, MISSED, exit codes."""

import argparse
import io
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench scripts import it the same way

from verdict import Target, Verdict, add_verdict_argument, format_number, ratio  # noqa: E402


def reported(verdict: Verdict) -> tuple[int, str]:
    out = io.StringIO()
    code = verdict.report(out)
    return code, out.getvalue()


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_verdict_argument(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("comparison", "below", "at", "above"),
    [
        ("<", True, False, False),
        ("<=", True, True, False),
        ("==", False, True, False),
        (">=", False, True, True),
        (">", False, False, True),
    ],
)
def test_each_comparison_at_its_boundary(comparison: str, below: bool, at: bool, above: bool) -> None:
    for measured, expected in ((19.999, below), (20.0, at), (20.001, above)):
        assert Target("p99", measured, comparison, 20.0, "ms").met is expected, (comparison, measured)  # type: ignore[arg-type]


def test_unknown_comparison_is_refused() -> None:
    with pytest.raises(ValueError, match="comparison"):
        Target("p99", 1.0, "=<", 2.0)  # type: ignore[arg-type]


def test_all_met_exits_0_with_the_table_and_the_verdict_line() -> None:
    verdict = Verdict()
    assert verdict.check("collector p99", 12.5, "<", 20, "ms", note="docstring")
    assert verdict.check("ratio collector/raw", 0.54, ">=", 0.5, "x")
    code, text = reported(verdict)
    lines = text.strip().splitlines()
    assert code == 0
    assert [cell.strip() for cell in lines[0].split(" | ")] == ["figure", "measured", "target", "verdict", "note"]
    assert "collector p99" in text and "12.5 ms" in text and "< 20 ms" in text and "0.54x" in text and ">= 0.5x" in text
    assert lines[-1] == "verdict: met"
    # One aligned table: every row has its separators at the same columns.
    rows = [line for line in lines if " | " in line]
    assert len(rows) == 3 and len({tuple(i for i, c in enumerate(r) if c == "|") for r in rows}) == 1


def test_a_missed_target_exits_1_and_is_named() -> None:
    verdict = Verdict()
    verdict.check("collector p99", 25.0, "<", 20, "ms")
    verdict.check("ratio collector/raw", 0.54, ">=", 0.5, "x")
    verdict.check("error responses", 3, "==", 0)
    code, text = reported(verdict)
    assert code == 1
    assert text.strip().splitlines()[-1] == "verdict: MISSED (collector p99; error responses)"
    assert [t.name for t in verdict.missed] == ["collector p99", "error responses"]


def test_no_verdict_prints_the_table_but_exits_0() -> None:
    verdict = Verdict.from_args(parsed("--no-verdict"))
    verdict.check("collector p99", 25.0, "<", 20, "ms")
    code, text = reported(verdict)
    assert code == 0
    assert "MISSED" in text and "collector p99" in text
    assert text.strip().splitlines()[-1] == "verdict not enforced (--no-verdict): MISSED (collector p99)"


def test_enforced_by_default() -> None:
    assert Verdict.from_args(parsed()).enforce
    assert not Verdict.from_args(parsed("--no-verdict")).enforce


@pytest.mark.parametrize("measured", [None, math.nan])
def test_an_unmeasured_figure_is_missed_never_met(measured: float | None) -> None:
    verdict = Verdict()
    # Whatever the comparison: a failed measurement must not pass.
    for comparison in ("<", "<=", "==", ">=", ">"):
        assert not verdict.check(f"figure {comparison}", measured, comparison, 1.0)
    code, text = reported(verdict)
    assert code == 1
    assert text.count("MISSED (not measured)") == 5
    assert "n/a" in text


def test_an_unmeasured_threshold_is_missed() -> None:
    verdict = Verdict()
    assert not verdict.check("R@20 vs popularity", 0.03, ">", math.nan)
    assert "MISSED (threshold not measured)" in reported(verdict)[1]


def test_infinite_figures_still_compare() -> None:
    assert Target("paired t", -math.inf, "<", -2.0).met
    assert not Target("paired t", math.inf, "<", -2.0).met


def test_no_targets_is_informational_and_exits_0() -> None:
    code, text = reported(Verdict())
    assert code == 0
    assert text.strip() == "verdict: no targets: informational"


def test_as_dict_records_every_target() -> None:
    verdict = Verdict()
    verdict.check("p99", 10.0, "<", 50, "ms")
    verdict.check("errors", 1, "==", 0)
    summary = verdict.as_dict()
    assert summary["enforced"] and not summary["met"] and summary["missed"] == ["errors"]
    assert [t["outcome"] for t in summary["targets"]] == ["met", "MISSED"]


def test_ratio_is_nan_when_it_cannot_be_computed() -> None:
    assert ratio(3.0, 2.0) == 1.5
    for numerator, denominator in ((1.0, 0.0), (None, 1.0), (1.0, None), (math.nan, 1.0)):
        assert math.isnan(ratio(numerator, denominator))


def test_number_formatting() -> None:
    assert [format_number(x) for x in (0, 50.0, 0.25, 0.2803, 23.617, 12345.6, -math.inf, None)] == [
        "0", "50", "0.25", "0.2803", "23.62", "12,346", "-inf", "n/a"]
