"""``BufferedCounter``: increments reach the Serve counter as per-tag sums, once per interval or on flush."""

from __future__ import annotations

from typing import Any

from serving.counter_buffer import BufferedCounter


class _RecordingCounter:
    def __init__(self) -> None:
        self.records: list[tuple[float, dict[str, str] | None]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.records.append((value, tags))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_increments_are_summed_per_tag_set_and_recorded_once_the_interval_passed() -> None:
    counter, clock = _RecordingCounter(), _Clock()
    buffered = BufferedCounter(counter, interval_s=1.0, clock=clock)
    buffered.inc()
    buffered.inc(2)
    buffered.inc(tags={"reason": "invalid_json"})
    buffered.inc(tags={"reason": "invalid_json"})
    buffered.inc(tags={"reason": "too_large"})
    assert counter.records == []  # within the interval: nothing recorded yet
    clock.now += 1.0
    buffered.inc()  # the first increment after the interval records every sum, itself included
    assert sorted(counter.records, key=repr) == sorted(
        [(4.0, None), (2.0, {"reason": "invalid_json"}), (1.0, {"reason": "too_large"})], key=repr)
    counter.records.clear()
    clock.now += 0.5
    buffered.inc(5)
    assert counter.records == []


def test_flush_records_what_is_pending_and_nothing_twice() -> None:
    counter: Any = _RecordingCounter()
    buffered = BufferedCounter(counter, interval_s=60.0, clock=_Clock())
    buffered.inc(3)
    buffered.flush()
    buffered.flush()
    assert counter.records == [(3.0, None)]
