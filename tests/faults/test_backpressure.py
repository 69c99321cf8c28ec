"""Backpressure: a slow Triton or database slows consumption, and the worker's memory stays bounded.

The worker is tests/faults/instrumented_worker.py (the real InferenceWorker and consumer config,
plus librdkafka statistics), its RSS is sampled from outside, and frames arrive at a steady rate
throughout. Two stalls: Triton stops answering (the worker reaches it through a proxy that
holds every byte in both directions; its requests time out after 3 s and are retried), then the
frames table is locked ACCESS EXCLUSIVE (the worker's insert waits).

Freezing Triton itself with SIGSTOP was tried first: after SIGCONT its python backend sometimes
aborts (boost::interprocess::lock_exception, a timed IPC lock that expired while frozen), which
tests Triton rather than the worker.

Comparison with librdkafka's own prefetch defaults (expected to fail the bound assertions):
    STEEL_FAULT_LIBRDKAFKA_DEFAULTS=1 .venv/bin/pytest tests/faults/test_backpressure.py
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from fault_stack import BATCH_SIZE, PARTITIONS, FaultCase, wait_until
from sqlalchemy import text

from stack.triton_server import TritonServer
from steelcore.frame_message import encode_image
from steelcore.kafka.client_config import (
    CONSUMER_FETCH_MAX_BYTES,
    CONSUMER_PREFETCH_KBYTES,
    CONSUMER_PREFETCH_MESSAGES,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

INSTRUMENTED = Path(__file__).with_name("instrumented_worker.py")
STALL_S = 8.0
BASELINE_S = 5.0
FRAMES_PER_S_PER_CAMERA = 6.0
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


class StallingProxy:
    """A TCP proxy to ``target`` (host:port) that can stop passing bytes, both ways, for a while:
    to its clients the server behind it is alive but answers nothing."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def close(self) -> None:
        self.closed.set()
        self.flowing.set()
        for sock in self.sockets:
            sock.close()


@pytest.fixture()
def triton_proxy(fault_triton: TritonServer) -> Iterator[StallingProxy]:
    proxy = StallingProxy(fault_triton.grpc_url)
    try:
        yield proxy
    finally:
        proxy.close()


class SteadyCamera(threading.Thread):
    """Publishes the case's two cameras at a steady rate until stopped; (time, total) per publish."""

    def __init__(self, case: FaultCase) -> None:
        super().__init__(daemon=True)
        self.case = case
        self.ids: list[str] = []
        self.timeline: list[tuple[float, int]] = []
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.wait(1.0 / FRAMES_PER_S_PER_CAMERA):
                self.ids.extend(self.case.publish(1))
                self.timeline.append((time.time(), len(self.ids)))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def produced_by(self, when: float) -> int:
        return max((n for t, n in self.timeline if t <= when), default=0)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.period_s):
            try:
                self.samples.append((time.time(), self.process.memory_info().rss))
            except psutil.NoSuchProcess:
                return


def on_wall_clock(stats: list[dict]) -> list[dict]:
    """Statistics with "t", the wall-clock time each report was made: librdkafka stamps it with its
    monotonic clock; the report delivered soonest after it was made gives the offset."""
    offset = min(s["delivered_at"] - s["ts_s"] for s in stats)
    return sorted(({**s, "t": s["ts_s"] + offset} for s in stats), key=lambda s: s["t"])


def value_at(stats: list[dict], when: float, key: str) -> int:
    """``key`` of the last report made at or before ``when`` (0 before the first)."""
    return next((s[key] for s in reversed(stats) if s["t"] <= when), 0)


def value_from(stats: list[dict], when: float, key: str) -> int:
    """``key`` of the first report made at or after ``when``: the state once a phase has begun
    (reports come every STATS_INTERVAL_MS, so the last one before it may be that much stale)."""
    return next((s[key] for s in stats if s["t"] >= when), value_at(stats, when, key))


def phase_numbers(
    name: str, start: float, end: float, stats: list[dict], rss: list[tuple[float, int]], camera: SteadyCamera
) -> dict[str, object]:
    """What happened between ``start`` and ``end`` (wall clock): frames produced and committed, the
    most frames the worker held and the most bytes it had prefetched, its largest RSS, and the
    frames left waiting in the broker at the end."""
    inside = [s for s in stats if start <= s["t"] <= end]
    rss_inside = [r for t, r in rss if start <= t <= end]
    return {
        "phase": name,
        "seconds": round(end - start, 1),
        "frames_produced": camera.produced_by(end) - camera.produced_by(start),
        "frames_committed": value_at(stats, end, "committed") - value_from(stats, start, "committed"),
        "max_frames_in_worker": max((s["in_process"] for s in inside), default=0),
        "max_prefetched_mb": round(max((s["prefetched_bytes"] for s in inside), default=0) / 2**20, 1),
        "frames_waiting_in_broker_at_end": camera.produced_by(end) - value_at(stats, end, "fetched"),
        "max_rss_mb": round(max(rss_inside, default=0) / 2**20, 1),
    }


def test_slow_triton_and_database_slow_consumption_and_memory_stays_bounded(
    triton_proxy: StallingProxy,
    fault_case: Callable[..., FaultCase],
    fault_images: np.ndarray,
    record_outcome: Callable[[dict], None],
) -> None:
    """Frames arrive at 12 per second on two partitions. Triton answers nothing for 8 s, later
    the frames table is locked for 8 s. Expected: while stalled the worker commits at most the
    batches in flight when the stall began (two at the boundary: the lock waits for an insert
    already running), holds at most its batch plus the bounded prefetch
    (steelcore.kafka.client_config: CONSUMER_PREFETCH_MESSAGES per partition plus one fetch response,
    at most CONSUMER_PREFETCH_KBYTES + CONSUMER_FETCH_MAX_BYTES), leaves the rest of the backlog
    in the broker, and its RSS stays within 64 MB of its steady state; afterwards it drains the
    backlog and every frame is stored exactly once."""
    proxy = triton_proxy
    case = fault_case("backpressure", triton_url=proxy.url)
    case.start_actuator()
    stats_path = case.root / "stats.jsonl"
    env = {"STEEL_FAULT_STATS": str(stats_path)}
    # For a comparison run: librdkafka's own prefetch defaults (the bound assertions then fail).
    env["STEEL_FAULT_LIBRDKAFKA_DEFAULTS"] = os.environ.get("STEEL_FAULT_LIBRDKAFKA_DEFAULTS", "0")
    worker = case.start_worker("w1", script=INSTRUMENTED, extra_env=env)
    worker.wait_consuming()
    camera, sampler = SteadyCamera(case), RssSampler(worker.pid)
    sampler.start()
    camera.start()
    marks: list[tuple[str, float, float]] = []
    try:
        wait_until(lambda: case.stored() > 0, "the first frames stored", 60)
        start = time.time()
        time.sleep(BASELINE_S)
        marks.append(("steady", start, time.time()))

        start = time.time()
        proxy.flowing.clear()
        try:
            time.sleep(STALL_S)
        finally:
            proxy.flowing.set()
        marks.append(("Triton silent", start, time.time()))
        start, backlog = time.time(), len(camera.ids)
        wait_until(lambda: case.stored() >= backlog, "the backlog drained after Triton", 120)
        marks.append(("drain after Triton", start, time.time()))

        with case.engine.connect() as conn:
            # The stall begins once the lock is held: LOCK waits for an insert already running.
            conn.execute(text("LOCK TABLE frames IN ACCESS EXCLUSIVE MODE"))
            start = time.time()
            time.sleep(STALL_S)
            conn.rollback()
        marks.append(("frames table locked", start, time.time()))
        start, backlog = time.time(), len(camera.ids)
        wait_until(lambda: case.stored() >= backlog, "the backlog drained after the lock", 120)
        marks.append(("drain after the lock", start, time.time()))
    finally:
        camera.stop_event.set()
        camera.join(30)
        proxy.flowing.set()
    assert camera.error is None, camera.error
    case.settle(len(camera.ids))
    sampler.stop_event.set()
    audit = case.audit(camera.ids)
    finish = case.finish_workers([worker])
    stats = on_wall_clock([json.loads(line) for line in stats_path.read_text().splitlines() if line])
    phases = [phase_numbers(name, t0, t1, stats, sampler.samples, camera) for name, t0, t1 in marks]

    # The worker's batch, the prefetch bound of each of its partitions, and one fetch response.
    frame_bytes = min(len(encode_image(image, "jpeg")) for image in fault_images)
    bound = (
        BATCH_SIZE
        + PARTITIONS * CONSUMER_PREFETCH_MESSAGES
        + math.ceil(CONSUMER_FETCH_MAX_BYTES / frame_bytes)
    )
    bytes_bound = CONSUMER_PREFETCH_KBYTES * 1024 + CONSUMER_FETCH_MAX_BYTES
    steady_rss = int(np.median([r for t, r in sampler.samples if marks[0][1] <= t <= marks[0][2]]))
    outcome = {
        "frames_per_s": 2 * FRAMES_PER_S_PER_CAMERA,
        "frame_kb": round(frame_bytes / 1024),
        "in_worker_bound_frames": bound,
        "prefetch_bound_mb": round(bytes_bound / 2**20, 1),
        "steady_rss_mb": round(steady_rss / 2**20, 1),
        "phases": phases,
        **audit,
        **finish,
    }
    record_outcome(outcome)
    for stall in (phases[1], phases[3]):
        assert stall["frames_committed"] <= 2 * BATCH_SIZE, stall
        assert stall["max_frames_in_worker"] <= bound, stall
        assert stall["max_prefetched_mb"] * 2**20 <= bytes_bound, stall
        assert stall["frames_waiting_in_broker_at_end"] > 0, stall
        assert stall["max_rss_mb"] * 2**20 - steady_rss < RSS_GROWTH_LIMIT, stall
