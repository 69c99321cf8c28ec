"""`steel bench triton` helpers that need no server: batching, the closed loop, the metrics split."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.closed_loop import batches_of, closed_loop
from benchmarks.triton_metrics import scrape, split_time

METRICS_BEFORE = """# HELP nv_inference_count Number of inferences performed
nv_inference_request_success{model="segmenter",version="1"} 10
nv_inference_count{model="segmenter",version="1"} 40
nv_inference_exec_count{model="segmenter",version="1"} 10
nv_inference_queue_duration_us{model="segmenter",version="1"} 1000
nv_inference_compute_infer_duration_us{model="segmenter",version="1"} 50000
nv_inference_count{model="classifier",version="1"} 40
"""
METRICS_AFTER = """nv_inference_request_success{model="segmenter",version="1"} 14
nv_inference_count{model="segmenter",version="1"} 56
nv_inference_exec_count{model="segmenter",version="1"} 12
nv_inference_queue_duration_us{model="segmenter",version="1"} 9000
nv_inference_compute_infer_duration_us{model="segmenter",version="1"} 90000
nv_inference_compute_input_duration_us{model="segmenter",version="1"} 2000
nv_inference_count{model="classifier",version="1"} 40
"""


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, list[str]]]:
    pages = [METRICS_BEFORE, METRICS_AFTER]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server dispatches to
            body = pages.pop(0).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", pages
    finally:
        server.shutdown()


def test_queue_and_compute_are_split_per_request(metrics_server: tuple[str, list[str]]) -> None:
    url, _ = metrics_server
    split = split_time(scrape(url), scrape(url))
    assert set(split) == {"segmenter"}, "a model without new requests is left out"
    seg = split["segmenter"]
    assert seg["requests"] == 4 and seg["frames"] == 16
    assert seg["mean_batch"] == pytest.approx(8.0)  # 16 frames in 2 executions
    assert seg["queue_ms_per_request"] == pytest.approx(2.0)  # 8000 us over 4 requests
    assert seg["compute_ms_per_request"] == pytest.approx(10.5)  # (40000 + 2000) us over 4


def test_batches_cycle_through_the_frames() -> None:
    frames = np.arange(3)[:, None, None] * np.ones((3, 2, 2), np.uint8)
    batches = batches_of(frames, 2, total_frames=5)
    assert [b[:, 0, 0].tolist() for b in batches] == [[0, 1], [2, 0], [1, 2]]


def test_closed_loop_keeps_the_callers_busy() -> None:
    in_flight, peak = [0], [0]
    lock = threading.Lock()

    def call(batch: np.ndarray) -> None:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1

    batches = [np.zeros((2, 1, 1), np.uint8)] * 8
    result = closed_loop(call, batches, concurrency=4)
    assert result["frames"] == 16 and result["requests"] == 8
    assert peak[0] == 4
    assert result["p50_ms"] >= 20 and result["frames_per_s"] > 0


def test_closed_loop_reports_a_failing_call() -> None:
    def call(batch: np.ndarray) -> None:
        raise ConnectionError("server gone")

    with pytest.raises(ConnectionError, match="server gone"):
        closed_loop(call, [np.zeros((1, 1, 1), np.uint8)] * 3, concurrency=2)
