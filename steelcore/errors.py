"""The project's root error: every exception class the project defines derives from SteelError.

A command can then tell its own failures from a library's by catching one type, and
ExternalServiceError marks the ones that mean "a service this process needs is down".
"""

from __future__ import annotations


class SteelError(Exception):
    """Root of every exception the project raises on purpose."""


class ExternalServiceError(SteelError):
    """A service outside this process (broker, database, Redis, Triton) cannot be reached or failed."""
