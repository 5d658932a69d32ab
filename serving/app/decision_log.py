"""Logging the bandit's decisions (bundle impressions) to Kafka without losing any, and without
making every response wait for the broker's acknowledgement.

Why: an impression carries the decision's context and propensities, which the learner and
off-policy evaluation need for every slate shown. Awaiting the acks=all produce on each request
cost a bundle response ~2.2 ms of its ~4.7 ms in the replica (median, measured in the replica at
100 requests/s). So a slate is returned once its record is in the idempotent producer (which
retries it until the produce timeout), and the acknowledgement is tracked here instead:

* a record that is not acknowledged (the broker went away) is kept and re-sent in the background
  until the broker takes it: it is lost only if this replica dies before the broker comes back;
* while any record is unacknowledged for longer than ``ack_grace_s``, or waits to be re-sent, new
  decisions wait for their own acknowledgement as before: a broker that does not answer turns
  into 503s within the produce timeout, and at most ``ack_grace_s`` of traffic is shown ahead of
  its log.

A record re-sent after a lost acknowledgement may reach Kafka twice; readers key impressions by
``request_id`` (the learner keeps one context per request id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from serving.collector.publisher import BrokerUnavailable, EventPublisher, OutgoingRecord

log = logging.getLogger(__name__)


class DecisionLog:
    """Impression records of one replica: handed to Kafka at once, acknowledged in the background.

    Args:
        publisher: the replica's acks=all producer.
        ack_grace_s: how long an acknowledgement may be outstanding before new decisions wait for
            theirs.
        retry_s: pause between re-sends of unacknowledged records while the broker is away.
        count: called with ``"resent"`` per record that had to be re-sent, ``"lost"`` per record
            given up at shutdown (for the replica's metrics).
    """

    def __init__(
        self, publisher: EventPublisher, ack_grace_s: float, retry_s: float = 1.0, count: Callable[[str, int], None] | None = None
    ) -> None:
        self._publisher = publisher
        self._grace_s = ack_grace_s
        self._retry_s = retry_s
        self._count = count or (lambda _what, _n: None)
        # Pending acknowledgement -> (when handed over, monotonic; its records), oldest first. Also
        # the futures' strong references: the event loop keeps only weak ones to tasks.
        self._outstanding: dict[asyncio.Future[None], tuple[float, int]] = {}
        self._backlog: deque[OutgoingRecord] = deque()
        self._resending: asyncio.Task[None] | None = None

    @property
    def prompt(self) -> bool:
        """Whether the broker is keeping up: nothing waits to be re-sent and no acknowledgement is
        overdue, so a decision need not wait for its own."""
        if self._backlog:
            return False
        oldest = next(iter(self._outstanding.values()), None)
        return oldest is None or time.monotonic() - oldest[0] < self._grace_s

    @property
    def unacknowledged(self) -> int:
        """Records handed over and not yet acknowledged (in flight or waiting to be re-sent)."""
        return sum(n for _, n in self._outstanding.values()) + len(self._backlog)

    async def log(self, records: list[OutgoingRecord]) -> None:
        """Returns once the records are in Kafka or certain to be re-sent until they are.

        Raises:
            BrokerUnavailable: the broker is not keeping up and did not acknowledge these records
                within the produce timeout (the caller must not show the decision).
        """
        if not self.prompt:
            await self._publisher.publish(records)
            return
        acks = await self._publisher.send(records)
        self._outstanding[acks] = (time.monotonic(), len(records))
        acks.add_done_callback(lambda done: self._settled(records, done))

    def _settled(self, records: list[OutgoingRecord], acks: asyncio.Future[None]) -> None:
        self._outstanding.pop(acks, None)
        if not acks.cancelled() and acks.exception() is None:
            return
        log.warning("%d impression record(s) not acknowledged; re-sending them until the broker takes them", len(records))
        self._backlog.extend(records)
        self._count("resent", len(records))
        if self._resending is None or self._resending.done():
            self._resending = asyncio.get_running_loop().create_task(self._resend())

    async def _resend(self) -> None:
        while self._backlog:
            batch = list(self._backlog)
            try:
                await self._publisher.publish(batch)
            except BrokerUnavailable as exc:
                log.warning("re-sending %d impression record(s) failed (%s); retrying in %.1fs", len(batch), exc, self._retry_s)
                await asyncio.sleep(self._retry_s)
                continue
            for _ in batch:
                self._backlog.popleft()
            log.info("re-sent %d impression record(s)", len(batch))

    def close(self) -> None:
        """Stop re-sending; records still unacknowledged are reported as lost."""
        if self._resending is not None:
            self._resending.cancel()
        if self._backlog:
            log.error("%d impression record(s) never acknowledged by Kafka are lost at shutdown", len(self._backlog))
            self._count("lost", len(self._backlog))
            self._backlog.clear()
