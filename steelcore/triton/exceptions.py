"""Errors of the Triton package: one tree for every way a Triton server fails a caller.

``TritonUnavailableError`` means "no server to talk to, try again later": the ensemble client retries
it, and the embedded launcher's "cannot run here" (stack/triton_server.py) derives from it.
"""

from __future__ import annotations

from steelcore.errors import ExternalServiceError


class TritonClientError(ExternalServiceError, RuntimeError):
    """A Triton request failed."""


class TritonUnavailableError(TritonClientError):
    """The server could not be reached, also after the retries."""


class TritonTimeoutError(TritonClientError):
    """The request ran past the client's timeout."""


class TritonInferenceError(TritonClientError):
    """The server answered with an error (bad input, a failing model)."""


def classify_error(exc: BaseException) -> TritonClientError:
    """Map a tritonclient / socket error onto the package's errors."""
    if isinstance(exc, TritonClientError):
        return exc
    status = ""
    status_fn = getattr(exc, "status", None)
    if callable(status_fn):
        status = str(status_fn() or "")
    message = str(exc) or type(exc).__name__
    # TimeoutError is an OSError: test it first.
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message or isinstance(exc, TimeoutError):
        return TritonTimeoutError(message)
    if isinstance(exc, OSError) or "UNAVAILABLE" in status or status == "503":
        return TritonUnavailableError(message)
    return TritonInferenceError(message)
