"""What the health page shows, gathered without Streamlit: each service's status
(steelcore.service_health), the Redis alarm stream's backlog and the workers' own Prometheus
metrics. Every probe is bounded by a timeout and reports a failure as data, never as an
exception, so one dead service cannot blank the page.

Worker metrics URLs (settings.dashboard_worker_metrics_urls) name services, not replicas: a compose
service name (Docker's DNS answers every replica's address) or a Kubernetes headless Service
(steel-worker-metrics, one address per ready pod). A plain HTTP request would reach one replica
chosen by the resolver, so each host name is resolved and every address is scraped; counters are
summed over the replicas (``worker_totals``) and each replica's values are kept as well.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from steelcore import worker_metrics
from steelcore.service_health import Health
from steelcore.service_health import service_status as probe_all
from steelcore.settings import Settings

PROBE_TIMEOUT_S = 2.0
# Worker metrics shown on the health page.
WORKER_METRICS = (
    worker_metrics.FRAMES_TOTAL,
    worker_metrics.ERRORS_TOTAL,
    worker_metrics.EVENT_LAG_SECONDS,
    worker_metrics.PAUSED,
    worker_metrics.ALARMS_PUBLISHED_TOTAL,
    worker_metrics.STAGE_SECONDS_SUM,
    worker_metrics.STAGE_SECONDS_COUNT,
    worker_metrics.OVERLOADED,
    worker_metrics.OVERLOAD_EPISODES_TOTAL,
    worker_metrics.FRAME_LATENCY_SECONDS,
    worker_metrics.LATENCY_TARGET_SECONDS,
    worker_metrics.BATCH_LIMIT,
)


@dataclass(frozen=True)
class StreamBacklog:
    length: int | None  # entries on the alarm stream
    pending: int | None  # delivered to the actuators' group but not acknowledged
    error: str | None = None


@dataclass(frozen=True)
class WorkerScrape:
    url: str  # the replica's own URL (the host name replaced by one of its addresses)
    samples: dict[str, float]  # "name{label=value,...}" -> value
    error: str | None = None
    service: str | None = None  # the configured URL it was resolved from, when it differs


# A resolver: socket.getaddrinfo's signature (the tests pass a fake).
Resolver = Callable[..., list[Any]]
# Most replicas scraped at once: each waits up to PROBE_TIMEOUT_S when one is down.
SCRAPE_THREADS = 8


@dataclass(frozen=True)
class LagVerdict:
    value: str  # the consumer lag as shown
    over: bool  # past the latency target: shown red
    delta: str | None  # how far past (or under) the target


def lag_verdict(lag_s: float | None, target_s: float) -> LagVerdict:
    """The consumer lag (now minus the newest stored frame's capture) against the latency target."""
    if lag_s is None:
        return LagVerdict("-", False, None)
    over = lag_s > target_s
    return LagVerdict(f"{lag_s:.1f} s", over, f"{lag_s - target_s:+.1f} s vs {target_s:g} s target")


def overloaded_workers(scrapes: list[WorkerScrape]) -> list[str]:
    """The metrics URLs of the workers that say the load is more than they serve."""
    return [s.url for s in scrapes if not s.error and s.samples.get(worker_metrics.OVERLOADED, 0.0) >= 1]


def service_status(settings: Settings) -> list[Health]:
    """Kafka, Postgres, Redis and Triton, each probed at the URL the clients use; Redis probed as
    the dashboard's own user when dashboard_redis_url is set."""
    if settings.dashboard_redis_url is not None:
        settings = settings.model_copy(update={"redis_url": settings.dashboard_redis_url})
    try:
        return probe_all(settings)
    except Exception as exc:  # a damaged stack.json: report it in place of the table
        return [Health("stack", up=False, url=None, detail=f"{type(exc).__name__}: {exc}")]


def alarm_backlog(settings: Settings) -> StreamBacklog:
    """Length of the Redis alarm stream and the actuators' unacknowledged entries."""
    from steelcore.redis.alarm_stream import stream_backlog
    from steelcore.redis.connection import dashboard_redis
    from steelcore.redis.exceptions import RedisError
    from steelcore.service_urls import ServiceUnavailableError

    try:
        client = dashboard_redis(settings, PROBE_TIMEOUT_S)
    except ServiceUnavailableError as exc:
        return StreamBacklog(None, None, str(exc))
    try:
        return StreamBacklog(*stream_backlog(client, settings.alarm_stream, settings.actuator_group))
    except RedisError as exc:
        return StreamBacklog(None, None, f"{type(exc).__name__}: {exc}")
    finally:
        client.close()


def replica_urls(url: str, resolver: Resolver = socket.getaddrinfo) -> list[str]:
    """``url`` once per address its host name resolves to (sorted, without repeats); ``url`` itself
    when the host is an address already or does not resolve (the scrape then reports why)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return [url]
    try:
        ipaddress.ip_address(host)
        return [url]
    except ValueError:
        pass
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return [url]
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    urls = []
    for address in addresses:
        shown = f"[{address}]" if ":" in address else address
        netloc = f"{userinfo}@{shown}:{port}" if userinfo else f"{shown}:{port}"
        urls.append(urlunsplit(parts._replace(netloc=netloc)))
    return urls


def scrape_workers(urls: Sequence[str], resolver: Resolver = socket.getaddrinfo) -> list[WorkerScrape]:
    """Every replica behind each of ``urls`` (see the module docstring), scraped in parallel."""
    targets = [(u, r) for u in urls for r in replica_urls(u, resolver)]
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(SCRAPE_THREADS, len(targets))) as pool:
        scrapes = list(pool.map(lambda t: scrape_worker(t[1]), targets))
    return [
        WorkerScrape(s.url, s.samples, s.error, service=u if u != s.url else None)
        for (u, _), s in zip(targets, scrapes, strict=True)
    ]


def worker_totals(scrapes: Sequence[WorkerScrape]) -> dict[str, float]:
    """Counters (``*_total``, and histogram ``*_sum`` / ``*_count``) summed over the replicas that
    answered; gauges (lag, paused, batch limit) mean nothing summed and stay per replica."""
    totals: dict[str, float] = {}
    for scrape in scrapes:
        if scrape.error:
            continue
        for key, value in scrape.samples.items():
            name = key.split("{", 1)[0]
            if name.endswith(("_total", "_sum", "_count")):
                totals[key] = totals.get(key, 0.0) + value
    return totals


def scrape_worker(url: str) -> WorkerScrape:
    """The worker metrics (WORKER_METRICS) exposed at ``url`` (http://host:port/metrics)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            text = response.read().decode("utf-8", errors="replace")
        samples = {
            worker_metrics.sample_key(s, quoted=False): float(s.value)
            for s in worker_metrics.metric_samples(text)
            if s.name in WORKER_METRICS and not math.isnan(s.value)
        }
        return WorkerScrape(url, samples)
    except Exception as exc:  # unreachable or not Prometheus text
        return WorkerScrape(url, {}, f"{type(exc).__name__}: {exc}")
