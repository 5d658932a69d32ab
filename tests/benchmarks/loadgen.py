"""An open-loop (constant-rate) HTTP load generator in separate processes, for the serving benchmarks.

Why not httpx in the benchmark's own process: an earlier attempt with an AsyncClient queued for
seconds at 100 requests/s (the event loop shared with the benchmark became the bottleneck). Why not
`wrk`: it is closed-loop (a connection sends its next request only when the previous answered), so
a slow server lowers the offered load and hides its own latency (coordinated omission); `wrk2`, whose
`-R` mode fixes that, is not packaged in Debian (``apt-cache policy wrk2``: no candidate). So this
does what wrk2 does, in Python: request ``i`` of the run is *scheduled* at ``t0 + i / rate``; the
requests are spread over several processes, each with a few threads per target endpoint that own
one keep-alive ``http.client`` connection each; a thread sends each of its requests at its scheduled time (or at once if
it is late) and the latency is measured from the **scheduled** time, so time spent queued behind a
slow response counts, as it would for a user.

Workers import only the standard library (fast to spawn) and return plain lists.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from urllib.parse import urlsplit

__all__ = ["DROPPED", "Request", "Result", "run_open_loop", "percentile", "summarize"]

DROPPED = -2  # status of a request not sent because the schedule was too far behind


@dataclass(frozen=True)
class Request:
    """One request of the schedule."""

    target: str  # label the results are grouped by
    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Result:
    """Per scheduled request (same order as the schedule)."""

    latency_s: list[float] = field(default_factory=list)  # response end - scheduled time
    service_s: list[float] = field(default_factory=list)  # response end - actual send
    status: list[int] = field(default_factory=list)  # HTTP status; -1 connection error, -2 not sent (too late)
    lateness_s: list[float] = field(default_factory=list)  # actual send - scheduled time
    elapsed_s: float = 0.0  # first scheduled send to the last response


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank on the sorted values); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _connection(host: str, port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(host, port, timeout=30)


def _lane(
    host: str, port: int, schedule: list[tuple[int, float, Request]], t0_mono: float,
    out: dict[int, tuple[float, float, int, float]], give_up_late_s: float,
) -> None:
    """One connection: its share of the schedule, each request at its time (or at once when late)."""
    conn = _connection(host, port)
    for index, offset, req in schedule:
        due = t0_mono + offset
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent = time.monotonic()
        if sent - due > give_up_late_s:
            # The server is far behind: skip rather than let the run last for ever; counted as an
            # error, with the lateness as a lower bound of its latency.
            out[index] = (sent - due, 0.0, DROPPED, sent - due)
            continue
        try:
            conn.request(req.method, req.path, body=req.body, headers=dict(req.headers))
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            status = -1
            conn.close()
            conn = _connection(host, port)  # a new keep-alive connection for the next request
        done = time.monotonic()
        out[index] = (done - due, done - sent, status, sent - due)
    conn.close()


def _worker(
    base_url: str, schedule: list[tuple[int, float, Request]], threads: int, t0_wall: float, give_up_late_s: float
) -> dict[int, tuple[float, float, int, float]]:
    parts = urlsplit(base_url)
    # CLOCK_MONOTONIC is per machine but its origin is arbitrary: map the shared wall-clock start.
    t0_mono = time.monotonic() + (t0_wall - time.time())
    out: dict[int, tuple[float, float, int, float]] = {}
    # Lanes per target: a slow response of one endpoint must not hold back another endpoint's requests
    # (head-of-line blocking on a shared connection would charge its queueing to the wrong target).
    by_target: dict[str, list[tuple[int, float, Request]]] = {}
    for item in schedule:
        by_target.setdefault(item[2].target.split(" (")[0], []).append(item)
    lanes = [part[i::threads] for part in by_target.values() for i in range(threads)]
    workers = [threading.Thread(target=_lane, args=(parts.hostname, parts.port, lane, t0_mono, out, give_up_late_s)) for lane in lanes if lane]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def run_open_loop(
    base_url: str, requests: list[Request], rate: float, processes: int = 4, threads: int = 4, start_delay_s: float = 3.0,
    give_up_late_s: float = 10.0,
) -> Result:
    """Send ``requests`` at ``rate`` per second (request i at t0 + i / rate) and time them.

    Args:
        base_url: ``http://host:port`` of the server.
        requests: the schedule's requests in order (their count and ``rate`` set the duration).
        rate: requests per second, all processes together.
        processes: load generator processes (each gets every ``processes``-th request).
        threads: connections per process and target (each gets every ``threads``-th request of that
            target in its process; the target's label up to " (" names it, so "GET /x (known)" and
            "GET /x (unknown)" share connections).
        start_delay_s: time for the processes to start before the first scheduled send.
        give_up_late_s: a request whose send would be later than this is not sent (status -2).

    Returns:
        Per-request results in schedule order.
    """
    if rate <= 0 or not requests:
        raise ValueError("need a positive rate and at least one request")
    schedule = [(i, i / rate, req) for i, req in enumerate(requests)]
    t0_wall = time.time() + start_delay_s
    merged: dict[int, tuple[float, float, int, float]] = {}
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, base_url, schedule[p::processes], threads, t0_wall, give_up_late_s) for p in range(processes)]
        for f in futures:
            merged.update(f.result())
    result = Result()
    last_done = 0.0
    for i, offset, _ in schedule:
        latency, service, status, late = merged[i]
        result.latency_s.append(latency)
        result.service_s.append(service)
        result.status.append(status)
        result.lateness_s.append(late)
        last_done = max(last_done, offset + latency)
    result.elapsed_s = last_done
    return result


def summarize(requests: list[Request], result: Result, skip_before_s: float = 0.0, rate: float = 1.0) -> dict[str, dict[str, float]]:
    """Per target: count, achieved throughput, p50/p95/p99 latency (ms, from the scheduled time),
    p50 service time (from the actual send), p99 send lateness (a late send means the connection was
    still busy with an earlier response, or the generator fell behind), errors (non-2xx or connection
    errors) and the status counts (-1: connection error).

    Requests scheduled before ``skip_before_s`` (warm-up) are left out.
    """
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
        if i / rate >= skip_before_s:
            groups.setdefault(req.target, []).append(i)
    out: dict[str, dict[str, float]] = {}
    for target, rows in groups.items():
        lat = [result.latency_s[i] * 1000 for i in rows]
        ok = [i for i in rows if 200 <= result.status[i] < 300]
        first = rows[0] / rate
        last_end = max(rows[j] / rate + result.latency_s[rows[j]] for j in range(len(rows)))
        span = max(last_end - first, 1e-9)
        out[target] = {
            "requests": len(rows),
            "ok": len(ok),
            "errors": len(rows) - len(ok),
            "throughput_per_s": len(ok) / span,
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat),
            "service_p50_ms": percentile([result.service_s[i] * 1000 for i in rows if result.status[i] != DROPPED], 50),
            "send_lateness_p99_ms": percentile([result.lateness_s[i] * 1000 for i in rows], 99),
            "statuses": {str(code): n for code, n in sorted(Counter(result.status[i] for i in rows).items())},
        }
    return out
