"""A daemon thread that calls one function on a timer: the worker's alarm relay and bucket janitor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class PeriodicThread:
    """Calls ``step`` every ``interval_s`` in the background (the first call one interval after
    start) until stopped. ``step`` handles its own errors: one that escapes ends the thread.

    ``on_clock_multiples``: call at the wall-clock instants that are multiples of ``interval_s``
    instead (the first one is the next such instant). Threads of several processes then step
    together: the bucket janitors of all workers move their floor in the same second, so every
    worker drops a drained bucket at about the same time (until session 9, when the floor was a
    subscription, this made a floor move one rebalance of the group instead of one per worker)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval_s: float,
        *,
        on_clock_multiples: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.step, self.interval_s = step, interval_s
        self.on_clock_multiples, self._clock = on_clock_multiples, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def next_wait_s(self) -> float:
        """Seconds until the next step is due (from now, after the previous step has returned)."""
        if not self.on_clock_multiples:
            return self.interval_s
        # A step that overran an instant waits for the next one rather than stepping twice.
        return self.interval_s - self._clock() % self.interval_s

    def _run(self) -> None:
        while not self._stop.wait(self.next_wait_s()):
            self.step()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
