"""The load `steel demo` offers (stack.demo_capacity): 70% of the capacity by default, --fps
overriding (and said to be too much when it is), the last bench result of this machine, a probe."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stack.demo_capacity import (
    Capacity,
    bench_capacity,
    camera_seconds,
    choose_offer,
    probe_capacity,
    with_cameras,
)

MEASURED = Capacity(20.0, "probe")


def test_the_default_offer_is_seventy_percent_of_the_capacity_over_the_cameras() -> None:
    offer = choose_offer(MEASURED, cameras=2, fps=None, fallback_fps=4.0)
    assert offer.chosen and offer.camera_fps == 7.0 and offer.total_fps == 14.0
    assert "serves about 20.0 frames/s (probe)" in offer.note and "2 x 7 frames/s" in offer.note


def test_the_cameras_time_is_taken_off_the_pipelines_capacity() -> None:
    # The measured case of docs/demo.md: 45 frames/s alone, 15 ms per frame for the cameras.
    served = with_cameras(Capacity(45.0, "bench"), 0.015)
    assert served.frames_per_s == pytest.approx(1 / (1 / 45 + 0.015)) and 26 < served.frames_per_s < 27
    assert served.source == "bench, less the demo cameras' 15 ms per frame"
    assert with_cameras(Capacity(45.0, "bench"), 0.0).frames_per_s == pytest.approx(45.0)
    offer = choose_offer(served, cameras=2, fps=None, fallback_fps=4.0)
    assert offer.camera_fps == 9.4  # 70% of 26.9 over two cameras, rounded down
    with pytest.raises(ValueError, match="finite number >= 0"):
        with_cameras(Capacity(45.0, "bench"), float("nan"))


def test_the_demo_camera_is_timed_on_real_frames() -> None:
    one, four = camera_seconds(1), camera_seconds(4)
    # Rendering a 1600x256 frame with its defects, JPEG and four RLE masks: milliseconds, not
    # nothing (a timing of no work) and not seconds.
    assert 0.001 < one < 1.0 and 0.001 < four < 1.0


def test_the_offer_rounds_down_and_never_reaches_zero() -> None:
    assert choose_offer(Capacity(9.9, "x"), 3, None, fallback_fps=4.0).camera_fps == 2.3  # 2.31 -> 2.3
    assert choose_offer(Capacity(0.05, "x"), 2, None, fallback_fps=4.0).camera_fps == 0.1
    assert choose_offer(Capacity(20.0, "x"), 2, None, fallback_fps=4.0, share=0.5).camera_fps == 5.0


def test_fps_overrides_and_says_when_it_is_more_than_the_machine_serves() -> None:
    offer = choose_offer(MEASURED, cameras=2, fps=12.0, fallback_fps=4.0)
    assert not offer.chosen and offer.camera_fps == 12.0
    assert "MORE than this machine serves" in offer.note
    within = choose_offer(MEASURED, cameras=2, fps=5.0, fallback_fps=4.0)
    assert "50% of about 20.0" in within.note
    assert choose_offer(None, cameras=2, fps=5.0, fallback_fps=4.0).camera_fps == 5.0


@pytest.mark.parametrize("capacity", [None, Capacity(0.0, "x"), Capacity(float("nan"), "x")])
def test_an_unknown_capacity_falls_back_to_the_settings(capacity: Capacity | None) -> None:
    offer = choose_offer(capacity, cameras=2, fps=None, fallback_fps=4.0)
    assert offer.camera_fps == 4.0 and "capacity unknown" in offer.note


def write_bench(path: Path, repository: Path, **machine: Any) -> None:
    info = {"hostname": platform.node(), "cpu_count": os.cpu_count(), "timestamp": "2026-12-04T19:00:00"}
    info.update(machine)
    rows = [
        {"workers": 1, "backlog_frames_per_s": 11.0},
        {"workers": 2, "infer_ahead": True, "backlog_frames_per_s": 12.5},
        # --compare-infer-ahead: the same count without, which the demo's workers do not run
        {"workers": 2, "infer_ahead": False, "backlog_frames_per_s": 10.5},
    ]
    config = {"triton_repository": str(repository)}
    path.write_text(json.dumps({"benchmark": "pipeline", "machine": info, "config": config, "results": rows}))


def test_the_last_bench_of_this_machine_gives_the_capacity(tmp_path: Path) -> None:
    result, repo = tmp_path / "pipeline.json", tmp_path / "repo"
    write_bench(result, repo)
    capacity = bench_capacity(result, 2, repo)
    assert capacity is not None and capacity.frames_per_s == 12.5
    assert "steel bench pipeline` of 2026-12-04 19:00" in capacity.source
    assert bench_capacity(result, 3, repo) is None  # no row for 3 workers
    assert bench_capacity(result, 2, tmp_path / "other-repo") is None  # another model repository
    write_bench(result, repo, hostname="another-machine")
    assert bench_capacity(result, 2, repo) is None
    result.write_text("{not json")
    assert bench_capacity(result, 2, repo) is None
    assert bench_capacity(tmp_path / "missing.json", 2, repo) is None


class SlowEnsemble:
    """5 ms per frame, one request at a time (like one Triton instance)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0

    def infer(self, frames: np.ndarray) -> None:
        with self.lock:
            self.calls += 1
            time.sleep(0.005 * len(frames))


def test_the_probe_counts_frames_served_per_second() -> None:
    client = SlowEnsemble()
    fps = probe_capacity(client, np.zeros((4, 2, 2), np.uint8), concurrency=2, seconds=0.3)
    assert 100 <= fps <= 220  # 200 frames/s at best; a loaded test machine serves less
    assert client.calls >= 2


def test_a_failing_probe_raises() -> None:
    class Broken:
        def infer(self, frames: np.ndarray) -> None:
            raise ConnectionError("triton down")

    with pytest.raises(ConnectionError):
        probe_capacity(Broken(), np.zeros((1, 2, 2), np.uint8), concurrency=1, seconds=0.1)


def test_the_live_block_says_loudly_when_workers_are_overloaded() -> None:
    from stack.demo_summary import Snapshot, render

    empty = {"p50": None, "p99": None, "count": 0}
    snapshot = Snapshot(1.0, 10, 8, 0, 8.0, {}, 0, 0, empty, empty, None, 0, None, workers_up=2)
    assert "OVERLOADED" not in render(snapshot, title="t")
    snapshot.workers_overloaded = 1
    assert "OVERLOADED: 1 of 2 workers" in render(snapshot, title="t").splitlines()[0]
