"""The feature pipeline's metrics: Beam ``Metrics`` in the transforms, Prometheus for the process.

Two layers, so that the DoFns depend on Beam's mechanism only:

* **Beam metrics** (namespace ``streamrec_pipeline``), counted where the records are: counters
  ``records_<stage>`` (``STAGES``) and ``dead_letters_<reason>`` in the shared transforms
  (``pipelines.transforms``, ``pipelines.streaming``); in the streaming job also the gauges
  ``consumer_lag_records_partition_<p>`` (the reader) and ``newest_event_timestamp_seconds`` (the
  lake writer). Beam metrics have no labels, so stage and reason are part of the name. On Flink,
  Flink's own metrics reporter exports them.
* **Prometheus** (``PipelineMetrics``): the micro-batch driver (``pipeline run --once|--follow``)
  queries each batch's Beam counters from its ``PipelineResult`` (``beam_counters``), adds what
  only the driver measures (batch seconds, consumer lag from Kafka's end offsets, freshness) and
  serves them on ``/metrics`` (``serve_metrics``, loopback unless configured). Names follow the
  Prometheus conventions (``_total`` counters, ``_seconds`` units):

  ==========================================  ======================================================
  ``streamrec_pipeline_records_total``         records per ``stage``: ``in`` (read from Kafka),
                                               ``valid`` (parsed; the event lake's rows), ``on_time``
                                               (within the allowed lateness), ``out`` (unique: folded
                                               into the features)
  ``streamrec_pipeline_dead_letters_total``    records sent to the DLQ, per ``reason``
  ``streamrec_pipeline_batch_seconds``         histogram of micro-batch durations (non-empty ones)
  ``streamrec_pipeline_batch_failures_total``  micro-batches that failed (retried; nothing committed)
  ``streamrec_pipeline_consumer_lag_records``  records in the topic not yet committed by the group
  ``streamrec_pipeline_freshness_seconds``     now - the newest event time written (at scrape time,
                                               so it grows while the pipeline stalls)
  ==========================================  ======================================================

Counts are at-least-once, as the DLQ: a batch re-run after a crash counts its records again.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
import time
from collections import Counter as _Tally
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "NAMESPACE",
    "PipelineMetrics",
    "STAGES",
    "beam_counters",
    "count_dead_letters",
    "count_records",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

NAMESPACE = "streamrec_pipeline"
# Where records are counted, in pipeline order (see the module docstring).
STAGES = ("in", "valid", "on_time", "out")
RECORDS_PREFIX = "records_"
DEAD_LETTERS_PREFIX = "dead_letters_"
CONSUMER_LAG_PREFIX = "consumer_lag_records_partition_"
NEWEST_EVENT = "newest_event_timestamp_seconds"

# Micro-batch durations: a one-event --follow batch takes ~0.1 s, a large catch-up batch a minute.
BATCH_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


# --- Beam side (inside DoFns) -------------------------------------------------------------------


@lru_cache(maxsize=None)
def _beam_counter(name: str) -> Any:
    return Metrics.counter(NAMESPACE, name)


def count_records(stage: str, n: int = 1) -> None:
    """Add ``n`` records at ``stage`` (one of ``STAGES``) to the running bundle's Beam counter."""
    if n:
        _beam_counter(RECORDS_PREFIX + stage).inc(n)


def count_dead_letters(reasons: Iterable[str]) -> None:
    """Count dead letters by reason code (one per item of ``reasons``)."""
    for reason, n in _Tally(reasons).items():
        _beam_counter(DEAD_LETTERS_PREFIX + reason).inc(n)


def set_consumer_lag(partition: int, records: int) -> None:
    """The streaming reader's lag on one partition: the high watermark minus its position."""
    Metrics.gauge(NAMESPACE, f"{CONSUMER_LAG_PREFIX}{partition}").set(records)


def set_newest_event(seconds: float) -> None:
    """The newest event time (unix seconds) a streaming sink wrote."""
    Metrics.gauge(NAMESPACE, NEWEST_EVENT).set(int(seconds))


def beam_counters(results: Any) -> dict[str, int]:
    """The ``streamrec_pipeline`` counters of a finished run, by name, summed over steps.

    Args:
        results: ``PipelineResult.metrics()`` (``MetricResults``), or None (no metrics: {}).

    Committed values where the runner reports them, else attempted ones (runners differ).
    """
    if results is None:
        return {}
    totals: dict[str, int] = {}
    for result in results.query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = result.committed if result.committed is not None else result.attempted
        name = result.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


# --- Prometheus side (the micro-batch driver) ----------------------------------------------------


class PipelineMetrics:
    """The pipeline process's Prometheus metrics, in a registry of their own (two pipelines in one
    process, as in tests, do not collide; ``serve_metrics`` serves one registry).

    The values live in this object and reach Prometheus through a custom collector, not through
    prometheus_client's Counter/Gauge/Histogram: importing Feast sets ``PROMETHEUS_MULTIPROC_DIR``
    (feast/metrics.py), which makes those classes keep their values in per-process files shared
    by every metric of the same name, whatever its registry.

    Args:
        registry: where to register (default: a new ``CollectorRegistry``).
        clock: unix time now (freshness is computed against it at scrape time).
    """

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._lock = threading.Lock()  # the scrape thread reads while the batch loop writes
        self._newest_event_s: float | None = None
        # Every stage exported from the start: rate() needs the first sample.
        self._records: dict[str, float] = {stage: 0.0 for stage in STAGES}
        self._dead_letters: dict[str, float] = {}
        self._batch_counts = [0] * (len(BATCH_SECONDS_BUCKETS) + 1)  # per bucket, the last one +Inf
        self._batch_sum = 0.0
        self._batch_failures = 0.0
        self._lag = 0.0
        self.registry.register(_PipelineCollector(self))

    def _freshness(self) -> float:
        newest = self._newest_event_s
        return math.nan if newest is None else self._clock() - newest

    def observe_batch(
        self,
        counters: Mapping[str, int],
        seconds: float | None,
        lag: int,
        newest_event_s: float | None,
    ) -> None:
        """Record one micro-batch.

        Args:
            counters: its Beam counters (``beam_counters``).
            seconds: its duration, or None for a batch that found nothing (not in the histogram).
            lag: the consumer lag after it.
            newest_event_s: the newest event time written so far (the watermark), if any.
        """
        with self._lock:
            for name, value in counters.items():
                if name.startswith(RECORDS_PREFIX):
                    stage = name.removeprefix(RECORDS_PREFIX)
                    self._records[stage] = self._records.get(stage, 0.0) + value
                elif name.startswith(DEAD_LETTERS_PREFIX):
                    reason = name.removeprefix(DEAD_LETTERS_PREFIX)
                    self._dead_letters[reason] = self._dead_letters.get(reason, 0.0) + value
            if seconds is not None:
                self._batch_counts[bisect.bisect_left(BATCH_SECONDS_BUCKETS, seconds)] += 1
                self._batch_sum += seconds
            self._lag = float(lag)
            if newest_event_s is not None:
                self._newest_event_s = newest_event_s

    def observe_failure(self) -> None:
        with self._lock:
            self._batch_failures += 1

    def families(self) -> list[Metric]:
        """The current values as Prometheus metric families (what a scrape reads)."""
        with self._lock:
            records = CounterMetricFamily("streamrec_pipeline_records", "Records through each stage of the feature pipeline.",
                                          labels=["stage"])
            for stage, value in self._records.items():
                records.add_metric([stage], value)
            dead = CounterMetricFamily("streamrec_pipeline_dead_letters", "Records sent to the dead-letter topic, by reason.",
                                       labels=["reason"])
            for reason, value in self._dead_letters.items():
                dead.add_metric([reason], value)
            cumulative = list(itertools.accumulate(self._batch_counts))
            batches = HistogramMetricFamily(
                "streamrec_pipeline_batch_seconds", "Duration of non-empty micro-batches (read, Beam run, sinks, commit).",
                buckets=[*zip((str(b) for b in BATCH_SECONDS_BUCKETS), cumulative), ("+Inf", cumulative[-1])],
                sum_value=self._batch_sum,
            )
            failures = CounterMetricFamily("streamrec_pipeline_batch_failures",
                                           "Micro-batches that failed (nothing committed; retried).", value=self._batch_failures)
            lag = GaugeMetricFamily("streamrec_pipeline_consumer_lag_records",
                                    "Records in the events topic not yet committed by the pipeline's group.", value=self._lag)
        freshness = GaugeMetricFamily(
            "streamrec_pipeline_freshness_seconds",
            "Seconds between now and the newest event time the pipeline has written (NaN before the first batch).",
            value=self._freshness(),
        )
        return [records, dead, batches, failures, lag, freshness]

    def exposition(self) -> str:
        """The registry in the Prometheus text format (what ``/metrics`` answers)."""
        return generate_latest(self.registry).decode("utf-8")


class _PipelineCollector(Collector):
    """prometheus_client's custom-collector interface over a ``PipelineMetrics``."""

    def __init__(self, metrics: PipelineMetrics):
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.families()


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread; ``shutdown()`` the
    returned server to stop. ``host`` comes from the settings (loopback unless configured)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    logger.info("serving Prometheus metrics", extra={"host": host, "port": server.server_port})
    return server
