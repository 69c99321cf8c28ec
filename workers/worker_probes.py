"""Liveness and readiness of an inference worker, served next to /metrics on the same port.

``GET /livez``: 200 while the consume loop made progress within settings.worker_liveness_timeout_s,
else 503. The loop beats a heartbeat on every pass, and also on every poll while it holds a batch
through an outage (it keeps serving the consumer then), so an outage of Triton or the database is
not a reason to restart the worker; a loop stuck inside one call is.

``GET /readyz``: 200 only when every readiness check passes (Triton's model ready, the database
reachable and at the newest schema revision, the consumer's partition assignment received), else
503 with the first failing check's reason. The checks ask remote services, so their answer is kept
for READINESS_CACHE_S: probes every few seconds from several sources cost one round of checks.
They run on one long-lived thread of their own, not on the HTTP server's thread of the moment: a
client kept per thread (Triton's HTTP client) is then made once, and a check that hangs is given
up after CHECK_TIMEOUT_S instead of holding the probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

log = logging.getLogger(__name__)

# How long one round of readiness checks is reused. Short against a probe period (Kubernetes:
# 10 s by default), long enough that a burst of probes asks Triton and Postgres once.
READINESS_CACHE_S = 2.0
# Longest a round of readiness checks may take (a kubelet's probe timeout is 1 s by default; the
# probe then fails on its own, but the answer still lands in the cache for the next one).
CHECK_TIMEOUT_S = 5.0

# A readiness check returns None when fine, else a short reason (shown in the 503 body).
Check = Callable[[], "str | None"]


class Heartbeat:
    """When the consume loop last made progress (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age_s(self) -> float:
        return self._clock() - self._last


class WorkerProbes:
    """The answers of /livez and /readyz; thread-safe (the HTTP server asks from its own threads)."""

    def __init__(
        self,
        liveness_timeout_s: float,
        checks: Sequence[tuple[str, Check]] = (),
        *,
        cache_s: float = READINESS_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if liveness_timeout_s <= 0:
            raise ValueError(f"liveness_timeout_s must be > 0, got {liveness_timeout_s}")
        self.liveness_timeout_s = liveness_timeout_s
        self.heartbeat = Heartbeat(clock)
        self.checks = list(checks)
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, bool, str] | None = None
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readiness")

    def beat(self) -> None:
        self.heartbeat.beat()

    def live(self) -> tuple[bool, str]:
        age = self.heartbeat.age_s()
        if age > self.liveness_timeout_s:
            return False, (
                f"consume loop made no progress for {age:.0f} s (timeout {self.liveness_timeout_s:g} s)"
            )
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        with self._lock:  # one round of checks at a time; the others wait and reuse its answer
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.cache_s:
                return self._cached[1], self._cached[2]
            try:
                ok, reason = self._checker.submit(self._run_checks).result(timeout=CHECK_TIMEOUT_S)
            except FutureTimeout:
                ok, reason = False, f"readiness checks did not answer within {CHECK_TIMEOUT_S:g} s"
            self._cached = (self._clock(), ok, reason)
            return ok, reason

    def close(self) -> None:
        self._checker.shutdown(wait=False, cancel_futures=True)

    def _run_checks(self) -> tuple[bool, str]:
        for name, check in self.checks:
            try:
                reason = check()
            except Exception as exc:  # a check that fails to answer means "not ready"
                reason = f"check failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                return False, f"{name}: {reason}"[:300]
        return True, "ok"
