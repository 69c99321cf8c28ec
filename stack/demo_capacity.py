"""How much load `steel demo` offers: a share (70%) of what this machine serves, so that a newcomer
on a slow machine sees a pipeline that keeps up rather than a lag that grows.

What the machine serves comes from, in this order:

1. the last `steel bench pipeline` result (bench-results/pipeline.json) when it was measured on this
   machine (same host name and CPU count) with the same Triton repository: its backlog frames/s for
   the demo's worker count (the whole pipeline, start-up left out);
2. otherwise a probe of a few seconds at start: the demo's Triton ensemble fed batches of synthetic
   frames back to back by as many callers as there are workers (the pipeline runs at the speed of
   the ensemble: docs/demo.md).

Either figure is of the pipeline alone, but the demo's cameras render and encode their synthetic
frames on the same cores. Their time per frame is measured at start and taken off, one for one
(:func:`with_cameras`): with Triton's OpenVINO threads on every core, a camera's work stalls
inference about one for one. Measured (docs/demo.md): the pipeline alone served 45 frames/s, the
cameras took 15 ms per frame, and the pipeline with its cameras kept up at 24 frames/s but fell
behind at 29-32; 1 / (1/45 + 0.015) = 26.9.

``--fps`` overrides the choice; the demo then still says when the load is more than the machine
serves.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SHARE = 0.7
PROBE_S = 4.0
PROBE_FRAMES = 8  # distinct synthetic frames sent round and round
CAMERA_SAMPLE_FRAMES = 4  # frames a camera renders and encodes to time it
MIN_CAMERA_FPS = 0.1


@dataclass(frozen=True)
class Capacity:
    frames_per_s: float  # what this machine serves, all cameras together
    source: str  # where the figure comes from, for the terminal


@dataclass(frozen=True)
class Offer:
    camera_fps: float  # per camera
    cameras: int
    capacity: Capacity | None
    chosen: bool  # False: --fps was given
    note: str

    @property
    def total_fps(self) -> float:
        return self.camera_fps * self.cameras


def choose_offer(
    capacity: Capacity | None,
    cameras: int,
    fps: float | None,
    *,
    fallback_fps: float,
    share: float = DEFAULT_SHARE,
) -> Offer:
    """Frames/s per camera: ``fps`` when given, else ``share`` of the capacity split over the
    cameras (rounded down to 0.1 frames/s), else ``fallback_fps`` when nothing was measured."""
    if cameras < 1 or not 0 < share <= 1:
        raise ValueError(f"need cameras >= 1 and 0 < share <= 1, got {cameras} and {share}")
    served = capacity.frames_per_s if capacity is not None else None
    if fps is not None:
        if served is not None and fps * cameras > served:
            note = (
                f"--fps {fps:g} x {cameras} cameras = {fps * cameras:.1f} frames/s is MORE than this "
                f"machine serves (about {served:.1f} frames/s, {capacity.source}): expect the lag to grow"
            )
        elif served is not None:
            note = f"--fps {fps:g}: {100 * fps * cameras / served:.0f}% of about {served:.1f} frames/s"
        else:
            note = f"--fps {fps:g}"
        return Offer(fps, cameras, capacity, False, note)
    if served is None or not math.isfinite(served) or served <= 0:
        note = f"capacity unknown; settings.camera_fps {fallback_fps:g} per camera (--fps overrides)"
        return Offer(fallback_fps, cameras, capacity, True, note)
    per_camera = max(MIN_CAMERA_FPS, math.floor(10 * share * served / cameras) / 10)
    note = (
        f"this machine serves about {served:.1f} frames/s ({capacity.source}); offering "
        f"{100 * share:.0f}%: {cameras} x {per_camera:g} frames/s (--fps overrides)"
    )
    return Offer(per_camera, cameras, capacity, True, note)


def bench_capacity(path: Path, workers: int, repository: Path) -> Capacity | None:
    """The pipeline frames/s of the last `steel bench pipeline` on this machine with ``workers``
    workers and the same Triton repository; None when there is no such result."""
    try:
        data = json.loads(path.read_text())
        machine, config = data["machine"], data["config"]
        # The demo's workers infer ahead (the default); a --compare-infer-ahead run also holds rows without.
        rows = [r for r in data["results"] if int(r["workers"]) == workers and r.get("infer_ahead", True)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if machine.get("hostname") != platform.node() or machine.get("cpu_count") != os.cpu_count():
        return None
    if Path(str(config.get("triton_repository", ""))).resolve() != repository.resolve() or not rows:
        return None
    fps = float(rows[-1].get("backlog_frames_per_s", 0.0))
    if not math.isfinite(fps) or fps <= 0:
        return None
    when = str(machine.get("timestamp", "?"))[:16].replace("T", " ")
    return Capacity(fps, f"`steel bench pipeline` of {when}, {workers} workers")


def camera_seconds(frames: int = CAMERA_SAMPLE_FRAMES) -> float:
    """Seconds the demo's synthetic camera spends on a frame: render, JPEG and the truth masks' RLE."""
    from producers.synthetic_camera import SyntheticCamera
    from steelcore.frame_message import encode_image
    from steelcore.rle import encode

    camera = SyntheticCamera(seed=0)
    camera.frame(0)  # its one-off set-up is not a per-frame cost
    began = time.perf_counter()
    for index in range(1, frames + 1):
        frame = camera.frame(index)
        encode_image(frame.image, "jpeg")
        for mask in frame.masks:
            encode(mask)
    return (time.perf_counter() - began) / frames


def with_cameras(capacity: Capacity, camera_s: float) -> Capacity:
    """What the machine serves when its own cameras also take ``camera_s`` per frame of its time."""
    if not (math.isfinite(camera_s) and camera_s >= 0):
        raise ValueError(f"camera seconds per frame must be a finite number >= 0, got {camera_s}")
    fps = 1.0 / (1.0 / capacity.frames_per_s + camera_s)
    source = f"{capacity.source}, less the demo cameras' {1000 * camera_s:.0f} ms per frame"
    return Capacity(fps, source)


def probe_capacity(client: Any, frames: Any, concurrency: int, seconds: float = PROBE_S) -> float:
    """Frames/s of ``client.infer`` fed ``frames`` (one batch) back to back by ``concurrency``
    callers for about ``seconds`` (after one warm-up call)."""
    client.infer(frames)
    done = [0] * concurrency
    errors: list[Exception] = []
    deadline = time.perf_counter() + seconds

    def caller(k: int) -> None:
        while time.perf_counter() < deadline and not errors:
            try:
                client.infer(frames)
            except Exception as exc:  # reported after the threads have stopped
                errors.append(exc)
                return
            done[k] += len(frames)

    began = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(done) / max(1e-6, time.perf_counter() - began)


def measure_capacity(settings: Any, workers: int, batch: int, seconds: float = PROBE_S) -> Capacity:
    """Probe the running Triton ensemble (see the module docstring)."""
    import numpy as np

    from producers.synthetic_camera import SyntheticCamera
    from steelcore.service_urls import triton_url
    from steelcore.triton.ensemble_client import TritonEnsembleClient

    camera = SyntheticCamera(seed=0)
    frames = np.stack([camera.frame(i).image for i in range(min(batch, PROBE_FRAMES))])
    with TritonEnsembleClient(
        triton_url(settings),
        settings.triton_protocol,
        settings.triton_model,
        timeout_s=60,
        max_in_flight=workers,
    ) as client:
        fps = probe_capacity(client, frames, workers, seconds)
    return Capacity(fps, f"Triton ensemble measured for {seconds:g} s, batches of {len(frames)} x {workers}")
