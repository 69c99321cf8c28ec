"""Prometheus metrics of an inference worker, served on ``/metrics`` when a port is given, with the
worker's probes ``/livez`` and ``/readyz`` on the same port (workers.worker_probes).

Lag is exported two ways. Event-time lag (now minus ``captured_at`` of the newest frame
processed) means the same on any broker. Offset lag (high watermark minus position) is exported
only against a real Kafka: the embedded Tansu broker reports the high watermark as the last
batch's base offset + 1, which would make it wrong (shared/notes/embedded-stack.md).
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from steelcore.worker_metrics import (
    ALARMS_PUBLISHED,
    BATCH_LIMIT,
    ERRORS,
    EVENT_LAG_SECONDS,
    FRAME_LATENCY_SECONDS,
    FRAMES,
    LATENCY_TARGET_SECONDS,
    OUTCOMES,
    OVERLOAD_EPISODES,
    OVERLOADED,
    PAUSED,
    SHADOW_OUTCOMES,
    STAGE_SECONDS,
    STAGES,
)
from workers.worker_probes import WorkerProbes

log = logging.getLogger(__name__)

# Latency buckets from 1 ms to 30 s: decode is milliseconds, inference on CPU up to seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """The worker's metrics in a registry of their own (several workers can share a process in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames = Counter(FRAMES, "Frames finished, by outcome", ["outcome"], registry=r)
        self.stage_seconds = Histogram(
            STAGE_SECONDS,
            "Latency of each stage per batch",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.errors = Counter(ERRORS, "Failed attempts, by stage", ["stage"], registry=r)
        self.alarms = Counter(ALARMS_PUBLISHED, "Alarms published to the stream", registry=r)
        # The alarm relay (workers.alarm_relay): the outbox rows it published, and the stream's trimming.
        self.alarms_relayed = Counter(
            "steel_worker_alarms_relayed", "Stored alarms published by the outbox relay", registry=r
        )
        self.alarm_stream_trimmed = Counter(
            "steel_worker_alarm_stream_trimmed",
            "Acknowledged entries trimmed from the alarm stream",
            registry=r,
        )
        self.alarms_trimmed_unacknowledged = Counter(
            "steel_worker_alarms_trimmed_unacknowledged",
            "Alarm stream entries trimmed by age before every consumer group acknowledged them (lost)",
            registry=r,
        )
        self.broker_restarts = Counter(
            "steel_worker_broker_restarts",
            "Restarts of the embedded broker noticed (a new, empty log: read again from its beginning)",
            registry=r,
        )
        self.alarm_stream_length = Gauge(
            "steel_worker_alarm_stream_length", "Entries on the alarm stream after the last trim", registry=r
        )
        self.batch_frames = Histogram(
            "steel_worker_batch_frames",
            "Messages per consumed batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.paused = Gauge(PAUSED, "1 while consumption is paused by an outage", registry=r)
        self.event_lag = Gauge(
            EVENT_LAG_SECONDS,
            "Now minus captured_at of the newest frame processed",
            registry=r,
        )
        # Batch size and load (workers.batch_policy).
        self.batch_limit = Gauge(
            BATCH_LIMIT, "Most frames the batch policy let the last batch take", registry=r
        )
        self.frame_latency = Gauge(
            FRAME_LATENCY_SECONDS,
            "Camera to done (stored, alarmed, committed) of the oldest frame of the last batch",
            registry=r,
        )
        self.latency_target = Gauge(
            LATENCY_TARGET_SECONDS, "Camera-to-alarm latency target (settings)", registry=r
        )
        self.overloaded = Gauge(
            OVERLOADED,
            "1 while the load is more than this worker serves: camera-to-done past the latency target "
            "and not shrinking for settings.overload_hold_s",
            registry=r,
        )
        self.overload_episodes = Counter(OVERLOAD_EPISODES, "Times the worker became overloaded", registry=r)
        self.drifting = Gauge(
            "steel_worker_camera_drifting",
            "1 while this worker sees the camera's frames outside what the model knows",
            ["camera"],
            registry=r,
        )
        self.inspection_alarms = Counter(
            "steel_worker_inspection_alarms",
            "Drift episodes this worker raised or cleared on the inspection stream",
            ["camera", "state"],
            registry=r,
        )
        self.shadow_frames = Counter(
            "steel_worker_shadow_frames",
            "Frames offered to the shadow version, by outcome (dropped: its queue was full)",
            ["outcome"],
            registry=r,
        )
        self.model_version = Gauge(
            "steel_worker_model_version", "Model version that judged this worker's last batch", registry=r
        )
        self.offset_lag = Gauge(
            "steel_worker_offset_lag",
            "High watermark minus position (real Kafka only)",
            ["topic", "partition"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.frames.labels(outcome)
        for stage in STAGES:
            self.errors.labels(stage)
        for outcome in SHADOW_OUTCOMES:
            self.shadow_frames.labels(outcome)
        self._server: Any = None

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.frames.labels(outcome).inc(n)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent); for logs and tests."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def serve(self, port: int, addr: str = "127.0.0.1", probes: WorkerProbes | None = None) -> int | None:
        """Serve /metrics (and /livez, /readyz when ``probes`` is given) on ``port`` (0 = off) from a
        thread; returns the port, or None when off."""
        if port == 0:
            return None
        if not 0 < port < 65536:
            raise ValueError(f"metrics port must be in 1..65535 (0 = off), got {port}")
        server_class = _IPv6Server if ":" in addr else ThreadingHTTPServer
        self._server = server_class((addr, port), _handler(self.registry, probes))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="worker-metrics", daemon=True).start()
        also = " and probes /livez, /readyz" if probes else ""
        log.info("metrics on http://%s:%d/metrics%s", addr, port, also)
        return port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(registry: CollectorRegistry, probes: WorkerProbes | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if probes is not None and path in ("/livez", "/readyz"):
                ok, reason = probes.live() if path == "/livez" else probes.ready()
                self._reply(200 if ok else 503, "text/plain; charset=utf-8", f"{reason}\n".encode())
                return
            # Any other path is the metrics page, as prometheus_client's own server does.
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, content_type, encoder(registry))

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape or probe every few seconds would flood the worker's log

    return Handler
