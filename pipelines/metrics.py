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

import logging
import math
import time
from collections import Counter as _Tally
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

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

    Args:
        registry: where to register (default: a new ``CollectorRegistry``).
        clock: unix time now (freshness is computed against it at scrape time).
    """

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._newest_event_s: float | None = None
        self.records = Counter(
            "streamrec_pipeline_records", "Records through each stage of the feature pipeline.", ["stage"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "streamrec_pipeline_dead_letters", "Records sent to the dead-letter topic, by reason.", ["reason"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "streamrec_pipeline_batch_seconds", "Duration of non-empty micro-batches (read, Beam run, sinks, commit).",
            buckets=BATCH_SECONDS_BUCKETS, registry=self.registry,
        )
        self.batch_failures = Counter(
            "streamrec_pipeline_batch_failures", "Micro-batches that failed (nothing committed; retried).",
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "streamrec_pipeline_consumer_lag_records", "Records in the events topic not yet committed by the pipeline's group.",
            registry=self.registry,
        )
        self.freshness = Gauge(
            "streamrec_pipeline_freshness_seconds",
            "Seconds between now and the newest event time the pipeline has written (NaN before the first batch).",
            registry=self.registry,
        )
        self.freshness.set_function(self._freshness)
        for stage in STAGES:  # every stage exported from the start: rate() needs the first sample
            self.records.labels(stage=stage)

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
        for name, value in counters.items():
            if name.startswith(RECORDS_PREFIX):
                self.records.labels(stage=name.removeprefix(RECORDS_PREFIX)).inc(value)
            elif name.startswith(DEAD_LETTERS_PREFIX):
                self.dead_letters.labels(reason=name.removeprefix(DEAD_LETTERS_PREFIX)).inc(value)
        if seconds is not None:
            self.batch_seconds.observe(seconds)
        self.consumer_lag.set(lag)
        if newest_event_s is not None:
            self._newest_event_s = newest_event_s

    def observe_failure(self) -> None:
        self.batch_failures.inc()

    def exposition(self) -> str:
        """The registry in the Prometheus text format (what ``/metrics`` answers)."""
        return generate_latest(self.registry).decode("utf-8")


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread; ``shutdown()`` the
    returned server to stop. ``host`` comes from the settings (loopback unless configured)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    logger.info("serving Prometheus metrics", extra={"host": host, "port": server.server_port})
    return server
