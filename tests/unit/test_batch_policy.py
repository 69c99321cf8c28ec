"""Adaptive batch size and overload detection (workers.batch_policy), alone and inside the worker
with fakes: small batches for a short backlog, the latency target respected, the largest batches
once the backlog is long, and an overload said loudly (error log, metric) and cleared."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from worker_fakes import AHEAD, FAST, FakeMessage, frame_value, make_worker

from workers.batch_policy import BatchPolicy, OverloadDetector
from workers.worker_config import WorkerConfig


def policy(frame_s: float = 0.1, target_s: float = 0.5, max_batch: int = 8) -> BatchPolicy:
    p = BatchPolicy(target_s, max_batch=max_batch, initial_frame_s=frame_s)
    return p


def test_a_short_backlog_gets_a_small_batch() -> None:
    p = policy()
    assert p.choose(backlog=1, lag_s=0.01) == 1
    assert p.choose(backlog=3, lag_s=0.01) == 3
    assert p.choose(backlog=0, lag_s=0.0) == 1  # the minimum: wait for one frame


def test_a_backlog_within_the_target_is_cut_to_what_meets_it() -> None:
    p = policy(frame_s=0.1, target_s=0.5)
    assert p.choose(backlog=8, lag_s=0.0) == 5
    assert p.choose(backlog=8, lag_s=0.15) == 3


@pytest.mark.parametrize("frame_s", [0.01, 0.04, 0.1, 0.3])
@pytest.mark.parametrize("lag_s", [0.0, 0.05, 0.1, 0.2, 0.24])
@pytest.mark.parametrize("backlog", [1, 2, 5, 8, 50])
def test_below_catch_up_a_batch_never_takes_the_oldest_frame_past_the_target(
    frame_s: float, lag_s: float, backlog: int
) -> None:
    p = policy(frame_s=frame_s, target_s=0.5)
    size = p.choose(backlog, lag_s)
    assert 1 <= size <= min(max(backlog, 1), 8)
    assert size == 1 or lag_s + size * frame_s <= 0.5 + 1e-9


def test_a_long_backlog_gets_the_largest_batches() -> None:
    p = policy(frame_s=0.1, target_s=0.5)
    assert p.catching_up(0.25) and not p.catching_up(0.2)
    assert p.choose(backlog=50, lag_s=0.3) == 8  # past half the target: throughput wins it back
    assert p.choose(backlog=3, lag_s=5.0) == 3  # never more than waits
    assert p.choose(backlog=50, lag_s=0.3) > p.choose(backlog=50, lag_s=0.0)


def test_the_seconds_per_frame_follow_the_batches_served() -> None:
    p = policy(frame_s=0.1)
    for _ in range(30):
        p.observe(frames=4, seconds=0.08)  # 20 ms per frame
    assert p.frame_s == pytest.approx(0.02, rel=0.01)
    assert p.choose(backlog=50, lag_s=0.0) == 8
    p.observe(frames=0, seconds=1.0)  # ignored
    p.observe(frames=2, seconds=float("nan"))
    assert p.frame_s == pytest.approx(0.02, rel=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [{"target_s": 0}, {"target_s": float("inf")}, {"max_batch": 0}, {"min_batch": 9}, {"catch_up_share": 0}],
)
def test_bad_policy_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(**{"target_s": 0.5, **kwargs})


def test_a_lag_past_the_target_that_does_not_shrink_is_an_overload() -> None:
    d = OverloadDetector(target_s=0.5, hold_s=10.0)
    assert not d.update(0.0, 2.0)
    assert not d.update(5.0, 3.0) and not d.overloaded  # not long enough yet
    assert d.update(10.0, 4.0) and d.overloaded  # became overloaded: reported once
    assert not d.update(12.0, 5.0) and d.overloaded
    assert d.episodes == 1
    assert not d.update(13.0, 0.4) and not d.overloaded  # back under the target
    d.update(20.0, 1.0)
    assert d.update(30.0, 1.0) and d.episodes == 2  # stuck past the target counts too


def test_catching_up_after_a_burst_is_not_an_overload() -> None:
    d = OverloadDetector(target_s=0.5, hold_s=10.0)
    for t, lag in [(0.0, 8.0), (10.0, 6.0), (20.0, 3.0), (30.0, 1.0), (35.0, 0.3)]:
        assert not d.update(t, lag)
    assert d.episodes == 0


def test_an_outage_or_an_empty_topic_is_not_an_overload() -> None:
    d = OverloadDetector(target_s=0.5, hold_s=10.0)
    d.update(0.0, 2.0)
    assert not d.update(20.0, 30.0, held=True)  # the wait was the outage's
    assert not d.update(25.0, 31.0)  # a new window starts after it
    d.update(40.0, 32.0)
    assert d.overloaded
    assert not d.idle(41.0) and d.overloaded  # one empty fetch: maybe a rebalance
    assert not d.idle(42.0) and d.overloaded
    d.update(42.5, 33.0)  # frames again: the idle time starts over
    assert not d.idle(43.0) and d.overloaded
    assert d.idle(45.0) and not d.overloaded  # nothing for idle_s: no backlog


# --- inside the worker -------------------------------------------------------------------------------


class StampedMessage(FakeMessage):
    """A fake Kafka message with the camera's timestamp (captured_at, ms)."""

    def __init__(self, *args: Any, ts_ms: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ts_ms = ts_ms

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts_ms)  # TIMESTAMP_CREATE_TIME


def stamped(n: int, age_s: float, first: int = 0) -> list[FakeMessage]:
    ts = int((time.time() - age_s) * 1000)
    return [StampedMessage(frame_value(first + i), i % 2, first + i, ts_ms=ts) for i in range(n)]


def test_the_worker_takes_few_fresh_frames_and_many_late_ones() -> None:
    worker, _journal, parts = make_worker([])
    worker.batching.frame_s = 0.088  # as measured on a slow machine: 5 frames fit in 0.5 s
    consumer = parts["consumer"]
    consumer.pending = stamped(20, age_s=0.0)
    # Fresh frames: what meets the latency target (4 when the test machine took 60 ms to get here).
    assert worker.run_once() in (4, 5)
    consumer.pending = stamped(20, age_s=3.0, first=100)
    worker.batching.frame_s = 0.1
    assert worker.run_once() == FAST.batch_size  # a long backlog: the largest batch
    assert worker.metrics.value("steel_worker_batch_limit") == FAST.batch_size
    assert worker.metrics.value("steel_worker_latency_target_seconds") == 0.5


@pytest.mark.parametrize("config", [FAST, AHEAD], ids=["one-batch", "infer-ahead"])
def test_the_worker_reports_an_overload_loudly_and_clears_it(
    config: WorkerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # Inference ahead: a look ahead that finds nothing is not idleness (a batch is in hand).
    worker, _journal, parts = make_worker([], config=config)
    worker.overload.hold_s = 0.05
    worker.overload.idle_s = 0.05
    consumer = parts["consumer"]
    # frame_value's captured_at is in 2025: every frame is far past the target, and later ones later.
    with caplog.at_level(logging.WARNING, logger="steel.worker"):
        for k in range(3):
            consumer.pending = [FakeMessage(frame_value(i), 0, 10 * k + i) for i in range(2)]
            worker.run_once()
            time.sleep(0.06)
        assert worker.metrics.value("steel_worker_overloaded") == 1
        assert worker.metrics.value("steel_worker_overload_episodes_total") == 1
        assert worker.metrics.value("steel_worker_frame_latency_seconds") > 1e6
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "OVERLOADED" in errors[0].getMessage()
        assert "more than this machine serves" in errors[0].getMessage()
        assert worker.run_once() == 0  # nothing waits any more ...
        assert worker.metrics.value("steel_worker_overloaded") == 1
        time.sleep(0.06)
        assert worker.run_once() == 0  # ... for idle_s
    assert worker.metrics.value("steel_worker_overloaded") == 0
    assert "load back within" in caplog.records[-1].getMessage()


def test_a_batch_held_by_an_outage_does_not_teach_the_policy_or_raise_an_overload() -> None:
    worker, _journal, _parts = make_worker(stamped(2, age_s=0.0), store_failures=2)
    worker.batching.frame_s = 0.05
    worker.run_once()
    assert worker.batching.frame_s == 0.05
    assert not worker.overload.overloaded
