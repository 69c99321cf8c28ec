"""A server started for a fixture and stopped after it, for the embedded services and Triton.

Importable from every test folder: pytest puts tests/ on sys.path because tests/conftest.py lives there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

import pytest


class _Server(Protocol):
    def start(self, timeout_s: float) -> object: ...

    def stop(self) -> object: ...


S = TypeVar("S", bound=_Server)


def running(server: S, timeout_s: float, what: str) -> Iterator[S]:
    """Start ``server`` and yield it, stopping it afterwards. A server that does not start fails the
    test (it is not skipped), with ``what`` and the cause (which names the server's log)."""
    try:
        server.start(timeout_s=timeout_s)
    except Exception as exc:
        pytest.fail(f"{what} did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
