"""Errors of the Postgres package."""

from __future__ import annotations

from steelcore.errors import ExternalServiceError, SteelError


class PostgresError(ExternalServiceError):
    """The defect database cannot be reached or refused an operation."""


# A usage error, not an outage: it derives from ValueError, not from PostgresError, so a caller that
# retries while the database is down does not retry this one.
class CommandLinePasswordError(SteelError, ValueError):
    """A database URL with a password was given as a command-line argument."""
