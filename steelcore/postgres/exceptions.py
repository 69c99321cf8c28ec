"""Errors of the Postgres package, and which of SQLAlchemy's errors mean what to a caller."""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from steelcore.errors import ExternalServiceError


class PostgresError(ExternalServiceError):
    """The defect database cannot be reached or refused an operation."""


def is_db_outage(exc: BaseException) -> bool:
    """The database is unreachable or dropped the connection: retry later, the rows are fine."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def is_refused_row(exc: BaseException) -> bool:
    """A database error about the content of the rows (SQLSTATE class 22, data exception: a value
    out of range; class 23, a constraint violated): the same write fails every time, so retrying
    it as an outage would stall the partition forever. The worker isolates the row instead."""
    return isinstance(exc, DataError | IntegrityError) and not is_db_outage(exc)
