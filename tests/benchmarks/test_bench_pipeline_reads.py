"""bench-pipeline's online reads: the reads a ratio compares are interleaved call by call."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as the bench scripts import each other

from bench_pipeline import interleaved_calls  # noqa: E402


def test_reads_alternate_each_in_turn_first_after_the_warmup():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("feast", "reader", "raw")}
    timings = interleaved_calls(calls, n=4, warmup=2)
    assert order[:6] == ["feast", "reader", "raw"] * 2  # warm-up rounds, untimed
    assert order[6:] == ["feast", "reader", "raw", "reader", "raw", "feast",
                         "raw", "feast", "reader", "feast", "reader", "raw"]
    assert {name: len(ms) for name, ms in timings.items()} == {"feast": 4, "reader": 4, "raw": 4}
    assert all(ms >= 0 for values in timings.values() for ms in values)
