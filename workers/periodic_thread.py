"""A daemon thread that calls one function on a timer: the worker's alarm relay and bucket janitor."""

from __future__ import annotations

import threading
from collections.abc import Callable


class PeriodicThread:
    """Calls ``step`` every ``interval_s`` in the background (the first call one interval after
    start) until stopped. ``step`` handles its own errors: one that escapes ends the thread."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float) -> None:
        self.step, self.interval_s = step, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.step()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
