"""Reading Kafka offset ranges with kafka-python: in the caller's process, or ahead of it in a
reader process of its own (``ReadAheadReader``). No Beam here: the reader process imports this
module only.

Why a reader process: kafka-python decodes every record in Python (~10 us a record: 0.85 s of
the 84k-record Taobao batch, measured). A large micro-batch whose state is passed whole needs no
record before its Beam run starts (``pipelines.state_subset``), so its records are read in the
reader process on a second core and reach the run chunk by chunk as they are decoded, while the
run works on the chunks before them. The reader also drops the records of deleted users and, when
asked, parses the records (``pipelines.event_rows.parse_ahead``): the parse was the largest part
of the Beam run, and the second core was idle for most of it. The process is started once
(``FeaturePipeline.prepare``) and serves every batch; it stops when its pipe closes (the pipeline
closed, or its process died).
"""

from __future__ import annotations

import gc
import multiprocessing
import signal
import sys
import time
from typing import Any, Collection, Iterable, Iterator, NamedTuple

from kafka import KafkaConsumer, TopicPartition

from pipelines.records import KafkaRecord, ParsedRow

__all__ = ["KafkaOffsetRange", "ReadAheadReader", "ReadChunk", "consumer", "iter_offset_ranges", "read_offset_ranges", "take_polled"]


class KafkaOffsetRange(NamedTuple):
    """Records ``[start, stop)`` of one partition."""

    topic: str
    partition: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return max(0, self.stop - self.start)


def consumer(client_options: dict[str, Any], group_id: str | None = None) -> KafkaConsumer:
    """A reading consumer from plain client options: Beam's workers and the reader process get
    the options (a picklable dict), not the settings, so the client factory
    (``streamrec.runtime.kafka``), which takes a ``KafkaConfig``, is not used here."""
    return KafkaConsumer(
        **client_options,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )


def take_polled(
    kafka_consumer: KafkaConsumer, tp: TopicPartition, offset_range: KafkaOffsetRange, position: int, records: list[Any]
) -> tuple[int, list[KafkaRecord]]:
    """The polled ``records`` of one partition that belong to ``offset_range`` from ``position``
    on, and the position after them."""
    taken = []
    for record in records:
        if record.offset >= offset_range.stop:
            break
        if record.offset >= position:
            position = record.offset + 1
            taken.append(KafkaRecord(record.topic, record.partition, record.offset, record.timestamp, record.key, record.value))
    if not records:
        # Offsets can have gaps (compaction, transaction markers): trust the consumer position.
        position = max(position, min(kafka_consumer.position(tp), offset_range.stop))
    elif records[-1].offset + 1 >= offset_range.stop:
        position = offset_range.stop
    return position, taken


def iter_offset_ranges(client_options: dict[str, Any], ranges: Iterable[KafkaOffsetRange],
                       timeout_s: float = 60.0) -> Iterator[list[KafkaRecord]]:
    """The records of ``ranges`` as they are polled: chunks, each of one partition in offset order
    (every partition assigned at once: one partition after the other waited for each one's
    fetches in turn)."""
    todo = [r for r in ranges if r.size > 0]
    if not todo:
        return
    reader = consumer(client_options)
    try:
        by_tp = {TopicPartition(r.topic, r.partition): r for r in todo}
        reader.assign(list(by_tp))
        for tp, r in by_tp.items():
            reader.seek(tp, r.start)
        positions = {tp: r.start for tp, r in by_tp.items()}
        deadline = time.monotonic() + timeout_s
        while any(positions[tp] < r.stop for tp, r in by_tp.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {todo} stalled at offsets {positions}")
            polled = reader.poll(timeout_ms=500, max_records=5000)
            for tp, r in by_tp.items():
                if positions[tp] < r.stop:
                    positions[tp], taken = take_polled(reader, tp, r, positions[tp], polled.get(tp, []))
                    if taken:
                        yield taken
    finally:
        reader.close()


def read_offset_ranges(client_options: dict[str, Any], ranges: Iterable[KafkaOffsetRange],
                       timeout_s: float = 60.0) -> list[KafkaRecord]:
    """All records of ``ranges``, partition by partition in offset order."""
    by_partition: dict[tuple[str, int], list[KafkaRecord]] = {}
    for chunk in iter_offset_ranges(client_options, ranges, timeout_s):
        by_partition.setdefault((chunk[0].topic, chunk[0].partition), []).extend(chunk)
    return [record for records in by_partition.values() for record in records]


# --- the reader process -------------------------------------------------------------------


class ReadChunk(NamedTuple):
    """Records of one partition in offset order, as the reader process hands them over."""

    records: list[KafkaRecord | ParsedRow]  # ParsedRow: parsed ahead (``ReadAheadReader.read(parse_share=...)``)
    deleted_user_records: int  # records of deleted users dropped from this chunk


class _ReadRequest(NamedTuple):
    ranges: list[tuple[str, int, int, int]]
    deleted: list[str]
    parse_share: float


class ReadAheadReader:
    """Offset ranges read in a reader process, handed over in chunks as they are decoded.

    Example:
        >>> reader = ReadAheadReader(settings.kafka.client_options())  # doctest: +SKIP
        >>> for chunk in reader.read(ranges): ...
        >>> reader.close()
    """

    def __init__(self, client_options: dict[str, Any], timeout_s: float = 60.0):
        self.client_options = dict(client_options)
        self.timeout_s = timeout_s
        self._process: Any = None
        self._conn: Any = None
        self._reads = 0  # requests sent so far
        self._unfinished: int | None = None  # the request whose chunks have not all been taken

    def start(self) -> None:
        """Start the reader process (if it is not running) and wait until it serves."""
        if self._process is not None and self._process.is_alive():
            return
        self.close()
        # Fork on Linux: no imports to repeat (the pipeline starts it before its own threads);
        # spawn elsewhere (fork is unsafe on macOS), importing only this module.
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        here, there = context.Pipe()
        self._process = context.Process(target=_serve, args=(there, here, self.client_options, self.timeout_s),
                                        name="streamrec-kafka-reader", daemon=True)
        self._process.start()
        there.close()
        self._conn = here
        if not here.poll(60) or here.recv() != ("ready", None):
            self.close()
            raise RuntimeError("the Kafka reader process did not start")

    def read(self, ranges: Iterable[KafkaOffsetRange], deleted: Collection[str] = (),
             parse_share: float = 0.0) -> Iterator[ReadChunk]:
        """The records of ``ranges`` in chunks (as ``iter_offset_ranges``), read in the process.
        The request is sent now, so the process reads while the caller prepares to take them.

        Args:
            deleted: user ids whose records are dropped (``pipelines.privacy.drop_deleted_users``).
            parse_share: the share of each chunk's records (its first ones) that is parsed there;
                of them, those the strict parse takes come as ``ParsedRow``s, the others as they
                are (``pipelines.event_rows.parse_ahead``).

        Raises:
            RuntimeError: the read failed in the process (its error named), or the process died.
        """
        if self._unfinished is not None:  # an earlier read was left before its end: its rest is in the pipe
            self.close()
        self.start()
        self._conn.send(_ReadRequest([tuple(r) for r in ranges], sorted(deleted), parse_share))
        self._reads += 1
        self._unfinished = self._reads
        return self._chunks(self._reads)

    def _chunks(self, read: int) -> Iterator[ReadChunk]:
        try:
            while True:
                if not self._conn.poll(self.timeout_s + 30):
                    raise TimeoutError(f"the Kafka reader process sent nothing for {self.timeout_s + 30:.0f}s")
                kind, payload = self._conn.recv()
                if kind == "records":
                    yield ReadChunk(*payload)
                elif kind == "done":
                    self._unfinished = None
                    return
                else:
                    self._unfinished = None  # the process reported and waits for the next request
                    raise RuntimeError(f"reading Kafka in the reader process failed: {payload}")
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"the Kafka reader process died ({type(exc).__name__})") from None
        finally:
            # Abandoned mid-read: the rest of it is still in the pipe. Only while it is the latest
            # read: a generator collected late must not stop the process serving a newer one.
            if self._unfinished == read:
                self.close()

    def close(self) -> None:
        self._unfinished = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None


def _serve(conn: Any, parent_end: Any, client_options: dict[str, Any], timeout_s: float) -> None:
    """The reader process: one request (a list of ranges) at a time, answered with
    ``("records", chunk)``... then ``("done", None)``, or ``("error", text)``; exits when the pipe
    closes."""
    parent_end.close()  # else the parent's end stays open here and a dead parent is never noticed
    # A forked reader holds a copy of the pipeline's heap: the collector must not walk it (slow,
    # and it copies every page it touches); only this process's own objects are collected.
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the pipeline, which closes the pipe
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if not _answer(conn, client_options, _ReadRequest(*request), timeout_s):
            return


def _answer(conn: Any, client_options: dict[str, Any], request: _ReadRequest, timeout_s: float) -> bool:
    """Send one request's chunks and its end (or its error); False when the pipe is closed."""
    # Here, not at the top: a spawned reader (not Linux) imports them only when it reads.
    from pipelines.event_rows import parse_ahead
    from pipelines.privacy import drop_deleted_users

    ranges = [KafkaOffsetRange(*r) for r in request.ranges]
    try:
        for chunk in iter_offset_ranges(client_options, ranges, timeout_s):
            kept, dropped = drop_deleted_users(chunk, request.deleted)
            try:
                conn.send(("records", (parse_ahead(kept, request.parse_share), dropped)))
            except OSError:
                return False
        reply: tuple[str, Any] = ("done", None)
    except Exception as exc:  # noqa: BLE001 - reported to the pipeline, which fails the batch
        reply = ("error", f"{type(exc).__name__}: {exc}")
    try:
        conn.send(reply)
    except OSError:
        return False
    return True
