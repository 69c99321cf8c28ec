"""One Prometheus text parser (prometheus_client's) behind workers.worker_metrics for every reader."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from steelcore import worker_metrics
from steelcore.worker_metrics import metric_samples, parse_metrics, sample_key
from workers.worker_metrics import WorkerMetrics


def test_prometheus_samples_are_parsed_with_their_labels() -> None:
    text = (
        '# HELP x\nsteel_worker_frames_total{outcome="stored"} 12.0\nsteel_worker_paused 0.0\nbroken line\n'
    )
    assert parse_metrics(text) == {
        'steel_worker_frames_total{outcome="stored"}': 12.0,
        "steel_worker_paused": 0.0,
    }


def test_a_strict_read_refuses_a_page_that_is_not_prometheus_text() -> None:
    with pytest.raises(ValueError):
        metric_samples("<html>not metrics</html>\n")


def test_keys_match_the_page_as_written_and_the_dashboard_form() -> None:
    metrics = WorkerMetrics()
    metrics.count("stored", 3)
    metrics.observe_stage("infer", 0.2)
    page = generate_latest(metrics.registry).decode()
    values = parse_metrics(page)
    assert values[f'{worker_metrics.FRAMES_TOTAL}{{outcome="stored"}}'] == 3
    assert values[f'{worker_metrics.STAGE_SECONDS_COUNT}{{stage="infer"}}'] == 1
    assert values[worker_metrics.PAUSED] == 0
    stored = next(s for s in metric_samples(page) if s.labels == {"outcome": "stored"})
    assert sample_key(stored, quoted=False) == f"{worker_metrics.FRAMES_TOTAL}{{outcome=stored}}"


def test_every_named_sample_is_exported_by_the_worker() -> None:
    metrics = WorkerMetrics()
    metrics.observe_stage("decode", 0.01)  # a labelled histogram shows samples once a stage is timed
    names = {s.name for s in metric_samples(generate_latest(metrics.registry).decode())}
    m = worker_metrics
    samples = (
        m.FRAMES_TOTAL,
        m.ERRORS_TOTAL,
        m.ALARMS_PUBLISHED_TOTAL,
        m.OVERLOAD_EPISODES_TOTAL,
        m.STAGE_SECONDS_SUM,
        m.STAGE_SECONDS_COUNT,
        m.PAUSED,
        m.EVENT_LAG_SECONDS,
        m.BATCH_LIMIT,
        m.FRAME_LATENCY_SECONDS,
        m.LATENCY_TARGET_SECONDS,
        m.OVERLOADED,
    )
    assert set(samples) <= names
