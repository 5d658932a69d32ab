"""Pulling what an ingress replica copies from the learner (policies, popularity) off the request path.

A pull is a handle call to the one learner replica, which may be busy folding the log: a request
that waited for it would see the learner's latency. Pulled every second at 100 requests/s, that was
1% of the requests, i.e. the p99 (bench-serving). So only a replica's first request waits (it has
nothing to serve yet); later pulls run as background tasks while requests use the last copy.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("ray.serve")


class BackgroundRefresh:
    """Runs ``pull`` at most every ``every_s``; only the first :meth:`ensure` awaits it.

    Args:
        pull: fetches and installs a fresh copy; an exception keeps the last copy (logged).
        every_s: minimum seconds between pulls.
        what: named in the warning when a pull fails.
    """

    def __init__(self, pull: Callable[[], Awaitable[None]], every_s: float, what: str) -> None:
        self._pull, self._every_s, self._what = pull, every_s, what
        self._started_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self.pulls = 0  # successful ones

    async def ensure(self) -> None:
        """Start a pull when the copy is stale; wait for it only if there has never been one."""
        if time.monotonic() - self._started_at < self._every_s or (self._task is not None and not self._task.done()):
            return
        self._started_at = time.monotonic()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
            await asyncio.shield(self._task)
        else:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._pull()
            self.pulls += 1
        except Exception as exc:  # noqa: BLE001 - learner restarting: keep serving the last copy
            log.warning("%s not refreshed (serving the last copy): %s", self._what, exc)
