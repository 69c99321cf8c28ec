"""The health page reaches every worker replica behind one metrics URL (a compose service name or a
Kubernetes headless Service), not the one a resolver happens to pick."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dashboard.service_health import replica_urls, scrape_workers, worker_totals
from stack.service import free_port
from steelcore.worker_metrics import EVENT_LAG_SECONDS, FRAMES_TOTAL
from workers.worker_metrics import WorkerMetrics

REPLICAS = ("127.0.0.1", "127.0.0.2")  # two loopback addresses: two servers on one port


def fake_resolver(table: dict[str, list[str]]) -> Any:
    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family = socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host] * 2]  # repeats too

    return resolve


@pytest.fixture()
def two_workers() -> Iterator[tuple[int, list[WorkerMetrics]]]:
    port = free_port()
    workers = [WorkerMetrics(), WorkerMetrics()]
    for metrics, address in zip(workers, REPLICAS, strict=True):
        metrics.serve(port, addr=address)
    try:
        yield port, workers
    finally:
        for metrics in workers:
            metrics.close()


def test_every_replica_behind_a_service_name_is_scraped_and_counters_are_summed(
    two_workers: tuple[int, list[WorkerMetrics]],
) -> None:
    port, (first, second) = two_workers
    first.count("stored", 5)
    second.count("stored", 7)
    first.event_lag.set(0.25)
    second.event_lag.set(0.5)
    url = f"http://steel-worker:{port}/metrics"
    scrapes = scrape_workers([url], fake_resolver({"steel-worker": list(REPLICAS)}))
    assert [s.url for s in scrapes] == [f"http://{a}:{port}/metrics" for a in REPLICAS]
    assert all(s.error is None and s.service == url for s in scrapes)
    totals = worker_totals(scrapes)
    assert totals[f"{FRAMES_TOTAL}{{outcome=stored}}"] == 12
    assert EVENT_LAG_SECONDS not in totals  # a gauge is not summed...
    lags = [s.samples[EVENT_LAG_SECONDS] for s in scrapes]
    assert lags == [0.25, 0.5]  # ...it stays per replica


def test_a_replica_that_does_not_answer_is_reported_and_left_out_of_the_sum(
    two_workers: tuple[int, list[WorkerMetrics]],
) -> None:
    port, (first, second) = two_workers
    first.count("stored", 5)
    second.close()
    scrapes = scrape_workers(
        [f"http://steel-worker:{port}/metrics"], fake_resolver({"steel-worker": list(REPLICAS)})
    )
    assert [s.error is None for s in scrapes] == [True, False]
    assert worker_totals(scrapes)[f"{FRAMES_TOTAL}{{outcome=stored}}"] == 5


def test_addresses_and_unknown_names_are_scraped_as_given() -> None:
    resolver = fake_resolver({"w": ["10.0.0.2", "10.0.0.1"], "v6": ["fd00::1"]})
    assert replica_urls("http://10.1.2.3:9100/metrics", resolver) == ["http://10.1.2.3:9100/metrics"]
    assert replica_urls("http://nowhere:9100/metrics", resolver) == ["http://nowhere:9100/metrics"]
    assert replica_urls("http://w:9100/metrics", resolver) == [
        "http://10.0.0.1:9100/metrics",
        "http://10.0.0.2:9100/metrics",
    ]
    assert replica_urls("http://v6/metrics", resolver) == ["http://[fd00::1]:80/metrics"]
    scrapes = scrape_workers(["http://nowhere:1/metrics"], resolver)
    assert len(scrapes) == 1 and scrapes[0].error and scrapes[0].service is None
