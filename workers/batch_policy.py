"""How many frames a worker takes per batch, and when it says the load is more than it serves.
Pure logic, no I/O: the worker feeds it what it measured and asks it what to do.

**Batch size** (:class:`BatchPolicy`). A frame's camera-to-alarm time is the time it waited in
Kafka (its *lag*: now minus its capture time) plus the time of the batch that carries it. A large
batch costs less per frame (one Triton request, one transaction) but takes longer, so:

- a short backlog gets a small batch: just what is waiting, never more than fits in the time left
  before the oldest waiting frame misses the latency target (``target_s - lag``), at the measured
  seconds per frame;
- a long backlog (the oldest frame already past ``catch_up_share`` of the target) gets the largest
  batch (``max_batch``) up to what is waiting: latency is lost already, throughput wins it back.
  Shrinking batches there would lower throughput and let the backlog grow for good.

The seconds per frame are learnt from the batches served (an exponential average of batch time /
frames), starting from ``initial_frame_s``.

**Overload** (:class:`OverloadDetector`). The load is more than the worker serves when the lag stays
above the target for ``hold_s`` while the worker is not held by an outage, and did not shrink over
that time (catching up after a burst shrinks it). It clears once the lag is back under the target,
or the worker has found nothing to consume for ``idle_s`` (one empty fetch is not enough: a
rebalance or a late camera can leave a busy worker a moment without frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BatchPolicy:
    target_s: float  # camera-to-alarm latency target (settings.latency_target_s)
    max_batch: int = 8  # the largest batch (the model's max batch: one Triton request)
    min_batch: int = 1
    catch_up_share: float = 0.5  # lag beyond this share of the target: largest batches
    initial_frame_s: float = 0.05  # seconds per frame before any batch was measured
    smoothing: float = 0.3  # weight of the newest batch in the seconds-per-frame average

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_s) and self.target_s > 0):
            raise ValueError(f"target_s must be a positive number, got {self.target_s}")
        if not 1 <= self.min_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min_batch <= max_batch, got {self.min_batch} and {self.max_batch}")
        if not 0 < self.catch_up_share <= 1 or not 0 < self.smoothing <= 1:
            raise ValueError("catch_up_share and smoothing must be in (0, 1]")
        if not self.initial_frame_s > 0:
            raise ValueError(f"initial_frame_s must be positive, got {self.initial_frame_s}")
        self.frame_s = self.initial_frame_s

    def observe(self, frames: int, seconds: float) -> None:
        """A batch of ``frames`` took ``seconds`` from consume to commit."""
        if frames < 1 or not (math.isfinite(seconds) and seconds >= 0):
            return
        self.frame_s += self.smoothing * (seconds / frames - self.frame_s)

    def catching_up(self, lag_s: float) -> bool:
        return lag_s >= self.catch_up_share * self.target_s

    def choose(self, backlog: int, lag_s: float) -> int:
        """Frames to take next, given ``backlog`` frames known to wait and the oldest one's lag."""
        if self.catching_up(lag_s):
            return max(self.min_batch, min(backlog, self.max_batch))
        fits = math.floor((self.target_s - lag_s) / self.frame_s)
        return max(self.min_batch, min(backlog, fits, self.max_batch))


@dataclass
class OverloadDetector:
    target_s: float
    hold_s: float = 15.0  # how long the lag must stay above the target, not shrinking
    idle_s: float = 2.0  # how long finding nothing to consume clears an overload
    overloaded: bool = False

    def __post_init__(self) -> None:
        if not (self.target_s > 0 and self.hold_s > 0):
            raise ValueError(f"target_s and hold_s must be positive, got {self.target_s} and {self.hold_s}")
        self._above_since: float | None = None  # when the lag went above the target
        self._lag_then = 0.0  # the lag at that moment (or at the last restart of the window)
        self._idle_since: float | None = None
        self.episodes = 0

    def update(self, now: float, lag_s: float, *, held: bool = False) -> bool:
        """One batch served at ``now`` (monotonic seconds) with its oldest frame ``lag_s`` behind.
        ``held``: the worker was held by an outage meanwhile (its lag is not the load's fault).
        True exactly when the worker *became* overloaded (to log it loudly once)."""
        self._idle_since = None
        if held or lag_s <= self.target_s:
            self._above_since = None
            self.overloaded = False
            return False
        if self._above_since is None:
            self._above_since, self._lag_then = now, lag_s
            return False
        if now - self._above_since < self.hold_s or self.overloaded:
            return False
        if lag_s < self._lag_then:  # shrinking: catching up; judge the next window
            self._above_since, self._lag_then = now, lag_s
            return False
        self.overloaded = True
        self.episodes += 1
        return True

    def idle(self, now: float) -> bool:
        """The worker found nothing to consume at ``now``; after ``idle_s`` of that there is no
        backlog, so no overload. True exactly when that cleared an overload."""
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.idle_s:
            return False
        self._above_since = None
        was, self.overloaded = self.overloaded, False
        return was
