"""How a batch step fails: an outage (the batch is held and retried) or a stop that outlasted it.

None of these is an ExternalServiceError: an Outage is handled inside the worker, and `steel work`
reports BatchAbandonedError with its own message and lets DeadLetterError through unreported.
"""

from __future__ import annotations

from steelcore.errors import SteelError
from steelcore.kafka.exceptions import is_kafka_outage


class Outage(SteelError):
    """A step failed because a service is unreachable; the batch is retried, never dropped."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


class DeadLetterError(SteelError, RuntimeError):
    """Dead-lettered messages were not all delivered."""


class BatchAbandonedError(SteelError, RuntimeError):
    """A stop was requested and an outage outlasted the shutdown grace; the batch stays uncommitted."""


def is_kafka_step_outage(exc: BaseException) -> bool:
    """A commit or dead-letter step that failed for want of the broker: retry it, never drop it."""
    return is_kafka_outage(exc) or isinstance(exc, DeadLetterError)
