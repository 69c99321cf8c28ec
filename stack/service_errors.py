"""Why an embedded service did not start, and the retry for the one cause that passes by itself (a
port still held by a previous run)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from steelcore.errors import SteelError

log = logging.getLogger("stack.service")  # the services' log, as before the split

T = TypeVar("T")

# A port left in TIME_WAIT by a previous run frees itself within a few seconds.
BIND_RETRY_ATTEMPTS = 5
BIND_RETRY_FIRST_DELAY_S = 0.25
ADDRESS_IN_USE_PATTERN = re.compile(r"address (already )?in use", re.IGNORECASE)


class ServiceError(SteelError, RuntimeError):
    """A service could not be started, reached or stopped; the message says which and where to look."""


class ServiceStartError(ServiceError):
    def __init__(self, name: str, reason: str, log_path: Path | None) -> None:
        where = f" (log: {log_path})" if log_path is not None else ""
        super().__init__(f"{name} failed to start: {reason}{where}")
        self.name = name
        self.reason = reason
        self.log_path = log_path


class AddressInUseError(ServiceStartError):
    """The port was taken; retrying later may succeed."""


def start_failure(name: str, reason: str, log_tail: str, log_path: Path | None) -> ServiceStartError:
    """The error for a failed start, quoting the end of its log; AddressInUseError when the log says so."""
    error_type = AddressInUseError if ADDRESS_IN_USE_PATTERN.search(log_tail) else ServiceStartError
    detail = log_tail[-400:].strip() or "(no output)"
    return error_type(name, f"{reason}: {detail}", log_path)


def retry_on_address_in_use(
    attempt: Callable[[], T],
    *,
    attempts: int = BIND_RETRY_ATTEMPTS,
    first_delay_s: float = BIND_RETRY_FIRST_DELAY_S,
) -> T:
    """Run ``attempt`` again, with doubling delays, while it raises AddressInUseError."""
    delay = first_delay_s
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except AddressInUseError as exc:
            if number == attempts:
                raise
            log.warning("%s; retrying in %.2f s (attempt %d of %d)", exc, delay, number + 1, attempts)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
