"""The consumer lag against the latency target, and the workers' overload verdict, as the live and
health pages show them (dashboard.service_health, no Streamlit)."""

from __future__ import annotations

from dashboard.service_health import WorkerScrape, lag_verdict, overloaded_workers
from steelcore.worker_metrics import OVERLOADED


def test_the_lag_turns_red_past_the_target() -> None:
    assert lag_verdict(None, 0.5).value == "-" and not lag_verdict(None, 0.5).over
    within = lag_verdict(0.3, 0.5)
    assert (within.value, within.over, within.delta) == ("0.3 s", False, "-0.2 s vs 0.5 s target")
    past = lag_verdict(18.0, 0.5)
    assert (past.value, past.over, past.delta) == ("18.0 s", True, "+17.5 s vs 0.5 s target")
    assert not lag_verdict(0.5, 0.5).over


def test_overloaded_workers_are_named_by_their_metrics_url() -> None:
    scrapes = [
        WorkerScrape("http://a/metrics", {OVERLOADED: 1.0}),
        WorkerScrape("http://b/metrics", {OVERLOADED: 0.0}),
        WorkerScrape("http://c/metrics", {}, error="URLError: refused"),
        WorkerScrape("http://d/metrics", {}),  # an older worker without the metric
    ]
    assert overloaded_workers(scrapes) == ["http://a/metrics"]
