"""Rebuilding the offline feature history from the event lake (``pipeline backfill --from DATE``).

The lake's events from ``DATE`` on (de-duplicated) are replayed in event-time steps through the
same composites, starting from an empty state, so history before ``DATE`` is not counted; use the
lake's first date for a full rebuild. Each step writes one offline file per view stamped with its
as-of time; the offline files with an as-of time on or after ``DATE`` are replaced. The online
store, the live pipeline's state and its consumer offsets are not touched.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timezone
from typing import Any, Callable, TYPE_CHECKING

from pipelines.accumulators import FeatureSpec
from pipelines.feast_sink import feature_frame, offline_file_as_of, write_offline
from pipelines.lake import read_event_lake
from pipelines.runner import compute_batch, records_from_lake
from pipelines.state_store import PipelineState
from pipelines.state_subset import merge_state, relevant_state

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings


def backfill(
    settings: Settings,
    from_date: date,
    step_s: int = 6 * 3600,
    on_step: Callable[[int, int, dict[str, int]], None] = lambda i, n, written: None,
) -> dict[str, Any]:
    """Recompute offline features from the lake; returns a summary (events, steps, rows per view)."""
    from features.repo import apply_feature_repo, offline_dir
    from features.views import ALL_FEATURE_VIEWS

    started = time.monotonic()
    apply_feature_repo(settings)
    lake = read_event_lake(settings.data.lake_dir, from_date=from_date)
    cutoff = datetime(from_date.year, from_date.month, from_date.day, tzinfo=timezone.utc).timestamp()
    for view in ALL_FEATURE_VIEWS:
        for old in offline_dir(settings, view.name).glob("asof-*.parquet"):
            as_of = offline_file_as_of(old.name)
            if as_of is not None and as_of >= cutoff:
                old.unlink()
    spec = FeatureSpec.from_config(settings.pipeline)
    # Replayed in event-time order, nothing is late; keep the lateness rule out of a rebuild.
    spec = FeatureSpec(**{**spec.__dict__, "allowed_lateness_s": max(spec.allowed_lateness_s, step_s)})
    written: dict[str, int] = {view.name: 0 for view in ALL_FEATURE_VIEWS}
    if lake.empty:
        return {"events": 0, "steps": 0, "features_written": written, "elapsed_s": time.monotonic() - started}
    seconds = lake["ts"].map(lambda t: t.timestamp())
    first = seconds.min()
    step_index = ((seconds - first) // step_s).astype(int)
    steps = sorted(step_index.unique())
    state = PipelineState()
    topic = settings.kafka.topics.events
    for n, step in enumerate(steps, start=1):
        chunk = lake[step_index == step]
        records = records_from_lake(chunk, topic)
        passed = relevant_state(state, records, spec)
        result = compute_batch(records, passed, spec, settings.pipeline.beam_args, topic,
                               shards=settings.pipeline.key_shards)
        state = merge_state(state, passed, result.state, spec)
        for view_name, rows in result.features.items():
            if rows and result.as_of is not None:
                write_offline(settings, view_name, feature_frame(view_name, rows, result.as_of), f"backfill-{step:06d}", result.as_of)
                written[view_name] += len(rows)
        on_step(n, len(steps), written)
    return {"events": len(lake), "steps": len(steps), "features_written": written, "elapsed_s": time.monotonic() - started}
