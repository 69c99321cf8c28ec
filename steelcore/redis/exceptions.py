"""Errors of the Redis package.

The library's own errors pass through the package unchanged: callers retry on ``RedisError`` (an
outage), and the actuator tells a lost consumer group by the NOGROUP text of a ``ResponseError``.
They are re-exported here so that modules outside the package need not import redis.
"""

from __future__ import annotations

from redis.exceptions import RedisError, ResponseError

from steelcore.errors import ExternalServiceError

__all__ = ["RedisError", "RedisUnavailableError", "ResponseError"]


class RedisUnavailableError(ExternalServiceError):
    """Redis did not answer the check a process makes before it starts work."""
