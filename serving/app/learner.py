"""`BanditLearner`: the one replica that holds the bandit policies and learns from Kafka.

A background thread reads the ``events`` topic and the serving feedback topic with ``assign()`` and
offsets it tracks itself (no consumer group), folds each record into :class:`LearnerState`, and
snapshots state + offsets to ``data.state_dir/bandit/snapshot.npz`` every ``snapshot_interval_s``
and on shutdown. On start it loads the snapshot and replays the log from the snapshot's offsets.
"""

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from ray import serve
from ray.serve import metrics

from serving import replica_loopback
from serving.app.args import RecommenderArgs
from serving.app.learner_state import Attribution, LearnerState, Limits, Rejection
from serving.bandit.impressions import Rewards
from serving.collector.ingest import dead_letter
from serving.feedback_tokens import signer_from_settings
from serving.recommend.bundle_features import ARM_DIM, USER_DIM
from streamrec.runtime.config import Settings
from streamrec.runtime.files import write_atomically
from streamrec.runtime.kafka import end_offsets, ensure_topics, new_consumer, new_producer

log = logging.getLogger("ray.serve")
replica_loopback.install()  # before Ray starts this replica's gRPC server (serving/replica_loopback.py)

SNAPSHOT_NAME = "snapshot.npz"
DLQ_SOURCE = "bandit-learner"


def snapshot_path(settings: Settings) -> Path:
    return settings.data.state_dir / "bandit" / SNAPSHOT_NAME


def new_learner_state(args: RecommenderArgs, settings: Settings) -> LearnerState:
    s = settings.serving
    return LearnerState(
        args.experiments,
        USER_DIM,
        ARM_DIM,
        Rewards(s.click_reward, s.purchase_reward, s.dismiss_reward),
        Limits(s.context_ttl_s, s.max_contexts, s.max_seen_event_ids, s.max_outcomes, s.max_popular_items),
        Attribution(signer_from_settings(settings), s.attribution_window_s, s.max_line_quantity, s.max_item_price),
    )


@serve.deployment(name="BanditLearner", num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class BanditLearner:
    def __init__(self, args: RecommenderArgs) -> None:
        self._settings = args.resolved_settings()
        self._args = args
        self._lock = threading.Lock()
        self._state = new_learner_state(args, self._settings)
        self._path = snapshot_path(self._settings)
        self._snapshot_interval_s = self._settings.serving.snapshot_interval_s
        self._restored: dict[str, Any] = {"from_snapshot": False, "fresh_policies": [], "records_at_restore": 0}
        self._restore()
        self._last_snapshot = time.monotonic()
        self._snapshots = 0
        self._dirty = False
        self._consumer_error: str | None = None
        self._updates = metrics.Counter(
            "streamrec_bandit_updates", description="Bandit policy updates from feedback.",
            tag_keys=("experiment", "variant"),
        )
        self._duplicates = metrics.Counter(
            "streamrec_bandit_feedback_duplicates", description="Feedback events skipped as already applied (event_id)."
        )
        self._rejected = metrics.Counter(
            "streamrec_feedback_rejected", description="Feedback the learner refused to credit, by reason.",
            tag_keys=("reason",),
        )
        # Refused feedback goes to the dead-letter topic with its reason (made on first use).
        self._dlq: KafkaProducer | None = None
        self._started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, name="bandit-feedback", daemon=True)
        self._thread.start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live knobs: ``snapshot_interval_s``."""
        if "snapshot_interval_s" in user_config:
            value = float(user_config["snapshot_interval_s"])
            if not value > 0:
                raise ValueError("snapshot_interval_s must be > 0")
            self._snapshot_interval_s = value

    # -- snapshots --------------------------------------------------------------------------

    def _restore(self) -> None:
        if not self._path.is_file():
            return
        try:
            fresh = self._state.load_bytes(self._path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - a corrupt snapshot: start again from the log
            log.error("bandit snapshot %s unreadable (%s); folding the log from the start", self._path, exc)
            self._state = new_learner_state(self._args, self._settings)
            return
        self._restored = {
            "from_snapshot": True,
            "fresh_policies": fresh,
            "records_at_restore": self._state.counters["records"],
            "feedback_applied_at_restore": self._state.counters["feedback_applied"],
            "offsets": dict(self._state.offsets),
        }
        log.info("bandit state restored from %s at offsets %s", self._path, self._state.offsets)

    def _snapshot(self) -> None:
        with self._lock:
            data = self._state.to_bytes()
            self._dirty = False
        write_atomically(self._path, data)
        self._last_snapshot = time.monotonic()
        self._snapshots += 1

    # -- the consumer thread ----------------------------------------------------------------

    def _partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        topics = (
            self._settings.kafka.topics.events, self._settings.kafka.topics.feedback, self._settings.kafka.topics.tombstones,
        )
        return [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]

    def _connect(self) -> tuple[KafkaConsumer, list[TopicPartition]]:
        try:
            ensure_topics(self._settings.kafka)  # the feedback topic may be new to this cluster
        except Exception as exc:  # noqa: BLE001 - the events topic alone still works
            log.warning("cannot create %s: %s", self._settings.kafka.topics.feedback, exc)
        consumer = new_consumer(self._settings.kafka, group_id=None, client_id="streamrec-bandit-learner",
                                max_poll_records=2000)
        partitions = self._partitions(consumer)
        self._seek(consumer, partitions)
        return consumer, partitions

    def _discard_snapshot_of_another_log(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        """A snapshot position past a partition's end means the log it came from is gone (the
        embedded broker is memory-only; a topic was re-created): its state would skip the new
        records, so start again from this log instead."""
        known = [tp for tp in partitions if self._state.position(tp.topic, tp.partition) is not None]
        if not known:
            return
        ends = end_offsets(consumer, known)
        ahead = {f"{tp.topic}:{tp.partition}": (self._state.position(tp.topic, tp.partition), ends.get(tp, 0))
                 for tp in known if (self._state.position(tp.topic, tp.partition) or 0) > ends.get(tp, 0)}
        if ahead:
            log.error("bandit snapshot is ahead of the log (position, end): %s; discarding it", ahead)
            with self._lock:
                self._state = new_learner_state(self._args, self._settings)
            self._restored = {"from_snapshot": False, "fresh_policies": [], "records_at_restore": 0,
                              "discarded_snapshot": ahead}

    def _seek(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self._discard_snapshot_of_another_log(consumer, partitions)
        unknown = [tp for tp in partitions if self._state.position(tp.topic, tp.partition) is None]
        ends: dict[TopicPartition, int] = {}
        if unknown and self._settings.serving.start_from == "latest":
            ends = end_offsets(consumer, unknown)
        consumer.assign(partitions)
        with self._lock:
            for tp in partitions:
                position = self._state.position(tp.topic, tp.partition)
                if position is None:
                    position = ends.get(tp, 0)
                    self._state.offsets[f"{tp.topic}:{tp.partition}"] = position
                consumer.seek(tp, position)

    def _consume(self) -> None:
        consumer: KafkaConsumer | None = None
        partitions: list[TopicPartition] = []
        checked = 0.0
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer, partitions = self._connect()
                    checked = time.monotonic()
                    self._consumer_error = None
                batches = consumer.poll(timeout_ms=200)
                updated: list[str] = []
                forgot = False
                duplicates_before = self._state.counters["feedback_duplicates"]
                tombstones = self._settings.kafka.topics.tombstones
                with self._lock:
                    for tp in sorted(batches, key=lambda t: (t.topic, t.partition)):
                        for r in batches[tp]:
                            if r.topic == tombstones:
                                forgot |= self._state.apply_tombstone(r.topic, r.partition, r.offset, r.value) is not None
                                continue
                            updated += self._state.apply_record(
                                r.topic, r.partition, r.offset, r.timestamp, r.value, r.headers
                            )
                    if batches:
                        self._dirty = True
                    duplicates = self._state.counters["feedback_duplicates"] - duplicates_before
                    rejections, self._state.rejections = self._state.rejections, []
                self._dead_letter(rejections)
                for key in updated:
                    experiment, _, variant = key.partition(" ")
                    self._updates.inc(tags={"experiment": experiment, "variant": variant})
                if duplicates > 0:
                    self._duplicates.inc(duplicates)
                now = time.monotonic()
                # A deletion is persisted at once: the snapshot on disk must not keep the user.
                if self._dirty and (forgot or now - self._last_snapshot >= self._snapshot_interval_s):
                    self._snapshot()
                if now - checked > 10:  # partitions added to a topic, or the feedback topic created late
                    checked = now
                    current = self._partitions(consumer)
                    if set(current) != set(partitions):
                        partitions = current
                        self._seek(consumer, partitions)
            except Exception as exc:  # noqa: BLE001 - broker down: retry, never lose the position
                self._consumer_error = f"{type(exc).__name__}: {exc}"
                log.warning("bandit feedback consumer: %s; reconnecting", self._consumer_error)
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:  # noqa: BLE001
                        pass
                consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _dead_letter(self, rejections: list[Rejection]) -> None:
        if not rejections:
            return
        now = datetime.now(timezone.utc)
        limits = self._settings.collector.limits
        for r in rejections:
            self._rejected.inc(tags={"reason": r.reason})
        try:
            if self._dlq is None:
                self._dlq = new_producer(self._settings.kafka, acks="all", client_id="streamrec-bandit-learner-dlq")
            for r in rejections:
                value = dead_letter(r.reason, r.detail, r.raw, now, limits, event_id=r.event_id, source=DLQ_SOURCE)
                self._dlq.send(self._settings.kafka.topics.dlq, value=value,
                               key=r.user_id.encode() if r.user_id else None)
        except Exception as exc:  # noqa: BLE001 - the counters still say what was refused
            log.warning("could not dead-letter %d refused feedback records: %s", len(rejections), exc)

    # -- the interface for the other deployments ---------------------------------------------

    async def policy_states(self, known: dict[str, int]) -> dict[str, bytes]:
        """The policies (``to_bytes``) whose update count differs from ``known`` (a replica's copy)."""
        with self._lock:
            return {key: p.to_bytes() for key, p in self._state.policies.items() if known.get(key) != p.n_updates}

    async def popular_items(self, n: int) -> list[tuple[str, float, str | None]]:
        with self._lock:
            return self._state.popular_items(n)

    async def experiment_outcomes(self, experiment: str) -> list[Any]:
        with self._lock:
            return self._state.request_outcomes(experiment)

    async def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = self._state.stats()
        stats.update(
            restored=self._restored,
            snapshots=self._snapshots,
            consumer_error=self._consumer_error,
            consumer_alive=self._thread.is_alive(),
            started_at=self._started_at,
        )
        return stats

    async def forget_user(self, user_id: str, request_id: str = "") -> dict[str, int]:
        """Drop the user's per-request entries now and persist the snapshot without them."""
        with self._lock:
            removed = self._state.forget_user(user_id, request_id)
            self._dirty = True
        self._snapshot()
        return removed

    async def snapshot_now(self) -> int:
        self._snapshot()
        return self._snapshots

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the feedback consumer thread died")

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is None:
            return
        stop.set()
        self._thread.join(timeout=5)
        if self._dlq is not None:
            self._dlq.close(timeout=2)
        try:
            self._snapshot()
        except Exception as exc:  # noqa: BLE001
            log.error("final bandit snapshot failed: %s", exc)
