"""The errors of the model lifecycle commands (`steel models`, stack.model_lifecycle); each carries
the exit code the command ends with."""

from __future__ import annotations

from steelcore import exit_codes
from steelcore.errors import SteelError


class LifecycleError(SteelError, RuntimeError):
    """A lifecycle command could not do what it was asked; ``exit_code`` says how."""

    exit_code = exit_codes.FAILURE


class BadCandidate(LifecycleError):
    """Unknown bundle, or one that cannot replace production (input shape, classes)."""

    exit_code = exit_codes.BAD_INPUT


class Refused(LifecycleError):
    """The gate, or the current roles, do not allow it; nothing was changed."""


class LoadFailed(LifecycleError):
    """Triton did not load the new configuration; the previous one serves again."""


class ServiceUnreachable(LifecycleError):
    """A service the command needs did not answer; nothing was changed."""

    exit_code = exit_codes.UNAVAILABLE


class TritonUnreachable(ServiceUnreachable):
    pass


class DatabaseUnreachable(ServiceUnreachable):
    """The model registry's database (Postgres) did not answer."""
