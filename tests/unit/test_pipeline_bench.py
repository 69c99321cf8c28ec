"""`steel bench pipeline` arithmetic and option checks (the run itself needs the whole stack)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from benchmarks import pipeline_bench

T0 = datetime(2025, 5, 1, 6, 0, tzinfo=UTC)


class FakeEngine:
    """Answers the one query backlog_throughput makes: the stored_at of each frame."""

    def __init__(self, stamps: list[datetime]) -> None:
        self.stamps = stamps

    def connect(self) -> Any:
        engine = self

        class Conn:
            def __enter__(self) -> Conn:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def execute(self, *_: Any) -> list[tuple[datetime]]:
                return [(t,) for t in engine.stamps]

        return Conn()


def test_backlog_throughput_leaves_out_the_first_batch() -> None:
    # Batches of 8 stored at 0, 2, 4 and 6 s: 24 frames processed in the 6 s after the first batch.
    stamps = [T0 + timedelta(seconds=2 * b) for b in range(4) for _ in range(8)]
    assert pipeline_bench.backlog_throughput(FakeEngine(stamps), "B1") == pytest.approx(24 / 6)


def test_a_backlog_stored_in_one_batch_cannot_be_timed() -> None:
    with pytest.raises(RuntimeError, match="one batch"):
        pipeline_bench.backlog_throughput(FakeEngine([T0] * 8), "B1")


def test_the_steady_rate_leaves_room_for_the_bench_cameras_own_work() -> None:
    parser = argparse.ArgumentParser()
    pipeline_bench.add_arguments(parser)
    # 64 frames/s alone; the cameras take 15 ms a frame on the same cores: 1 / (1/64 + 0.015) = 32.7.
    rate, served = pipeline_bench.steady_rate(parser.parse_args([]), 64.0, 0.015)
    assert served == pytest.approx(32.65, abs=0.01) and rate == pytest.approx(0.7 * served)
    rate, _ = pipeline_bench.steady_rate(parser.parse_args(["--steady-fraction", "0.5"]), 64.0, 0.0)
    assert rate == pytest.approx(32.0)
    rate, _ = pipeline_bench.steady_rate(parser.parse_args(["--steady-fps", "24"]), 64.0, 0.015)
    assert rate == 24.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "positive worker counts"),
        (["--frames", "4"], "--frames >= 2 x --batch-size"),
        (["--steady-fps", "0"], "--steady-fps must be positive"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(argv: list[str], message: str) -> None:
    parser = argparse.ArgumentParser()
    pipeline_bench.add_arguments(parser)
    with pytest.raises(ValueError, match=message):
        pipeline_bench.run(parser.parse_args(argv))
