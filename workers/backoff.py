"""Retry delays for a worker held by an outage."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff: initial, initial*factor, ... up to maximum, with downward jitter
    (so workers hit by one outage do not retry in lockstep, and the cap is never exceeded)."""

    def __init__(
        self,
        initial_s: float,
        maximum_s: float,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= maximum_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial_s <= maximum_s, factor >= 1 and 0 <= jitter < 1")
        self.initial_s, self.maximum_s, self.factor, self.jitter = initial_s, maximum_s, factor, jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        # The exponent is capped too: factor ** attempt overflows a float after ~1000 retries.
        base = min(self.maximum_s, self.initial_s * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0
