"""The pipeline's metrics: Beam counters counted by the transforms, read back from the run's result,
and the Prometheus exposition the micro-batch driver serves (``pipelines.metrics``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import httpx
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline  # not `import TestPipeline`: pytest would try to collect it
from pipeline_support import T0, ev, pipeline_settings, produce
from prometheus_client.parser import text_string_to_metric_families

from features.events import event_to_json, parse_event
from pipelines.accumulators import FeatureSpec
from pipelines.batch_run import batch_options
from pipelines.metrics import NAMESPACE, PipelineMetrics, beam_counters, serve_metrics
from pipelines.packed import Packed
from pipelines.records import KafkaRecord
from pipelines.runner import compute_batch
from pipelines.state_store import PipelineState
from pipelines.transforms import DeduplicateEvents, DropLateEvents, EventTimeWatermark, ParseEvents, ParseRecordBatches
from streamrec.runtime.config import Settings

REPO = Path(__file__).resolve().parents[2]

BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=1"]
WATERMARK = T0 + 10_000.0
LATENESS_S = 3600

# The expected Prometheus families of the driver (the names the monitoring rules use).
PROMETHEUS_NAMES = {
    "streamrec_pipeline_records_total",
    "streamrec_pipeline_dead_letters_total",
    "streamrec_pipeline_batch_seconds_bucket",
    "streamrec_pipeline_batch_failures_total",
    "streamrec_pipeline_consumer_lag_records",
    "streamrec_pipeline_freshness_seconds",
}


def _records() -> tuple[list[KafkaRecord], dict[str, int]]:
    """Two on-time events, a second copy of one, one late event, two malformed records; and the
    Beam counters they give against ``WATERMARK`` (records per stage, dead letters per reason)."""
    on_time = [ev("view", "u1", 9000, item_id="i1", category_id="c1"), ev("view", "u2", 9500, item_id="i2")]
    late = ev("view", "u3", 0, item_id="i3")
    good = [*on_time, on_time[0], late]
    values = [event_to_json(parse_event(e)) for e in good]
    values += [b"{not json", json.dumps({k: v for k, v in on_time[1].items() if k != "user_id"}).encode()]
    records = [KafkaRecord("events", 0, i, 0, b"k", v) for i, v in enumerate(values)]
    expected = {
        "records_in": 6, "records_valid": 4, "records_on_time": 3, "records_out": 2,
        "dead_letters_invalid_json": 1, "dead_letters_missing_field": 1, "dead_letters_late_event": 1,
    }
    return records, expected


def _by_top_step(results) -> dict[str, dict[str, int]]:
    """The namespace's counters per top-level transform label (e.g. ``Batched/Validate`` -> ``Batched``)."""
    out: dict[str, dict[str, int]] = {}
    for result in results.query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        top = result.key.step.split("/")[0]
        counters = out.setdefault(top, {})
        counters[result.key.metric.name] = counters.get(result.key.metric.name, 0) + result.committed
    return out


def test_the_transforms_count_records_and_dead_letters_by_reason_in_beam_metrics():
    """Batched composites (micro-batches) and per-record ones (the streaming job's parse) count the
    same records; the counters come back through the run's ``PipelineResult``."""
    records, expected = _records()
    p = test_pipeline.TestPipeline(options=batch_options(BEAM_ARGS))
    parsed = p | "Batches" >> beam.Create([Packed(records[:3]), Packed(records[3:])]) | "Batched" >> ParseRecordBatches()
    on_time = parsed["parsed"] | "Lateness" >> DropLateEvents(WATERMARK, LATENESS_S, "events")
    as_of = on_time["events"] | "AsOf" >> EventTimeWatermark(WATERMARK)
    seen = p | "Seen" >> beam.Create([])
    _ = {"events": on_time["events"], "seen": seen} | "Dedupe" >> DeduplicateEvents(as_of, LATENESS_S, 4)
    _ = p | "Records" >> beam.Create(records) | "One" >> ParseEvents()
    result = p.run()
    result.wait_until_finish()

    by_step = _by_top_step(result.metrics())
    assert by_step["Batched"] == {k: v for k, v in expected.items()
                                  if k in ("records_in", "records_valid", "dead_letters_invalid_json",
                                           "dead_letters_missing_field")}
    assert by_step["Lateness"] == {"records_on_time": 3, "dead_letters_late_event": 1}
    assert by_step["Dedupe"] == {"records_out": 2}
    assert by_step["One"] == by_step["Batched"]  # the per-record parse counts alike
    # beam_counters: summed over steps (here the per-record parse counts its records a second time).
    totals = beam_counters(result.metrics())
    assert totals["records_in"] == 2 * expected["records_in"] and totals["records_out"] == expected["records_out"]


def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Exposition text -> sample name -> sorted labels -> value."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_a_micro_batch_run_feeds_the_prometheus_metrics(tmp_path):
    """The compiled micro-batch graph's counters (a fresh set per run) reach the Prometheus registry
    with the conventional names; freshness is computed at scrape time from the newest event."""
    records, expected = _records()
    state = PipelineState(watermark=WATERMARK)
    spec = FeatureSpec(allowed_lateness_s=LATENESS_S)
    compute_batch([], state, spec, BEAM_ARGS, "events", tmp_path)  # builds the graph: the runs below re-run it
    first = compute_batch(records, state, spec, BEAM_ARGS, "events", tmp_path)
    assert first.counters == expected
    second = compute_batch(records[-1:], state, spec, BEAM_ARGS, "events", tmp_path)
    # Only this run's records (no stage after the parse saw one: those counters were never touched).
    assert second.counters == {"records_in": 1, "dead_letters_missing_field": 1}

    now = [WATERMARK + 100.0]
    metrics = PipelineMetrics(clock=lambda: now[0])
    nan = _families(metrics.exposition())["streamrec_pipeline_freshness_seconds"][()]
    assert nan != nan  # NaN before the first batch: no freshness yet
    metrics.observe_batch(first.counters, 1.5, 7, first.as_of)
    metrics.observe_batch(second.counters, 0.2, 0, first.as_of)
    metrics.observe_failure()
    now[0] += 60
    samples = _families(metrics.exposition())

    assert PROMETHEUS_NAMES <= samples.keys()
    assert samples["streamrec_pipeline_records_total"] == {
        (("stage", "in"),): 7.0, (("stage", "valid"),): 4.0, (("stage", "on_time"),): 3.0, (("stage", "out"),): 2.0,
    }
    assert samples["streamrec_pipeline_dead_letters_total"] == {
        (("reason", "invalid_json"),): 1.0, (("reason", "late_event"),): 1.0, (("reason", "missing_field"),): 2.0,
    }
    assert samples["streamrec_pipeline_batch_seconds_count"][()] == 2.0
    assert samples["streamrec_pipeline_batch_seconds_sum"][()] == pytest.approx(1.7)
    assert samples["streamrec_pipeline_batch_failures_total"][()] == 1.0
    assert samples["streamrec_pipeline_consumer_lag_records"][()] == 0.0
    assert first.as_of == WATERMARK  # the newest event written so far (this batch's are older)
    assert samples["streamrec_pipeline_freshness_seconds"][()] == pytest.approx(now[0] - first.as_of)


def test_the_metrics_endpoint_is_off_by_default_and_binds_loopback():
    settings = Settings()
    assert settings.pipeline.metrics_port is None
    assert str(settings.pipeline.metrics_host) == "127.0.0.1"


@pytest.mark.kafka
def test_follow_batches_are_served_on_the_metrics_endpoint(kafka_broker, tmp_path):
    """A real micro-batch (Kafka -> Beam -> sinks -> commit) and a scrape over loopback HTTP."""
    from pipelines.runner import FeaturePipeline

    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    events = [ev("view", "u1", 0, item_id="i1", category_id="c1"), ev("view", "u2", 30, item_id="i2")]
    produce(settings, events, raw=[b"{not json"])
    pipeline = FeaturePipeline(settings)
    server = serve_metrics(pipeline.metrics.registry, "127.0.0.1", 0)  # port 0: a free one
    try:
        summary = pipeline.run_once()
        assert summary.records == 3 and summary.lag == 0
        assert pipeline.run_once().records == 0  # an idle poll: lag and freshness still reported
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200
        samples = _families(response.text)
    finally:
        server.shutdown()
        server.server_close()
        pipeline.close()
    assert PROMETHEUS_NAMES <= samples.keys()
    assert samples["streamrec_pipeline_records_total"][(("stage", "in"),)] == 3.0
    assert samples["streamrec_pipeline_records_total"][(("stage", "out"),)] == 2.0
    assert samples["streamrec_pipeline_dead_letters_total"] == {(("reason", "invalid_json"),): 1.0}
    assert samples["streamrec_pipeline_batch_seconds_count"][()] == 1.0  # the idle poll is no batch
    assert samples["streamrec_pipeline_consumer_lag_records"][()] == 0.0
    assert samples["streamrec_pipeline_freshness_seconds"][()] > 0  # T0 is in 2017


@pytest.mark.kafka
def test_the_streaming_job_reports_its_counts_lag_and_newest_event_as_beam_metrics(kafka_broker, tmp_path):
    """The unbounded job (made finite by stop offsets): the same counters from the shared parse, and
    the gauges only it can measure, which Flink's reporter exports on a cluster."""
    from pipelines.kafka_source import plan_offset_ranges
    from pipelines.streaming import run_streaming

    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    events = [ev("view", "u1", 0, item_id="i1", category_id="c1"), ev("view", "u1", 30, item_id="i2")]
    produce(settings, events + events[:1], raw=[b"{not json"])
    ranges = plan_offset_ranges(settings.kafka, settings.kafka.topics.events, "unused-group")
    stops = {r.partition: r.stop for r in ranges}

    result = run_streaming(settings, ["--runner=DirectRunner"], stop_offsets=stops)

    assert beam_counters(result.metrics()) == {
        "records_in": 4, "records_valid": 3, "records_on_time": 3, "records_out": 2, "dead_letters_invalid_json": 1,
    }
    gauges = {g.key.metric.name: g.committed.value
              for g in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["gauges"]}
    assert gauges["newest_event_timestamp_seconds"] == T0 + 30
    lags = {name: value for name, value in gauges.items() if name.startswith("consumer_lag_records_partition_")}
    read = {f"consumer_lag_records_partition_{r.partition}" for r in ranges if r.size}
    assert read <= lags.keys() and all(lags[name] == 0 for name in read)  # read up to the end offsets


def test_each_pipeline_metrics_starts_from_zero_even_after_feast_switched_prometheus_to_multiprocess():
    # Importing Feast before prometheus_client sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client's
    # own metric classes then share values between the registries of one process (in CI a test's
    # pipeline started at the totals of every earlier one). A fresh interpreter, Feast first:
    probe = """
import feast.metrics
from prometheus_client import values
from pipelines.metrics import PipelineMetrics
assert "MultiProcess" in values.ValueClass.__qualname__, values.ValueClass
first = PipelineMetrics()
first.observe_batch({"records_in": 5, "dead_letters_invalid_json": 1}, 0.3, 0, None)
second = PipelineMetrics()
text = second.exposition()
assert 'streamrec_pipeline_records_total{stage="in"} 0.0' in text, text
assert "invalid_json" not in text and "streamrec_pipeline_batch_seconds_count 0.0" in text, text
assert 'streamrec_pipeline_batch_seconds_bucket{le="0.5"} 1.0' in first.exposition()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
