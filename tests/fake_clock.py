"""A clock a test moves by hand, for code that takes ``clock: Callable[[], float]``.

Importable from every test folder: pytest puts tests/ on sys.path because tests/conftest.py lives there.
"""

from __future__ import annotations


class FakeClock:
    """``clock()`` returns ``clock.now``; a test advances it by assigning or adding to ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
