"""Every exception class the project defines derives from the one root, SteelError."""

from __future__ import annotations

import pytest

from dashboard.auth import AuthConfigError
from stack.demo_scene import SceneFailed, SceneInterrupted
from stack.lifecycle_errors import (
    BadCandidate,
    DatabaseUnreachable,
    LifecycleError,
    LoadFailed,
    Refused,
    ServiceUnreachable,
    TritonUnreachable,
)
from stack.service_errors import AddressInUseError, ServiceError, ServiceStartError
from stack.triton_errors import EmbeddedTritonUnavailableError, TritonError
from steelcore.errors import ExternalServiceError, SteelError
from steelcore.frame_message import FrameMessageError
from steelcore.postgres.engine import CommandLinePasswordError
from steelcore.postgres.exceptions import PostgresError
from steelcore.postgres.verdicts import FeedbackError
from steelcore.service_urls import ServiceUnavailableError
from steelcore.triton.exceptions import (
    TritonClientError,
    TritonInferenceError,
    TritonTimeoutError,
    TritonUnavailableError,
)
from workers.worker_errors import BatchAbandonedError, DeadLetterError, Outage

PROJECT_ERRORS = [
    AuthConfigError,
    FeedbackError,
    SceneFailed,
    SceneInterrupted,
    LifecycleError,
    BadCandidate,
    Refused,
    LoadFailed,
    TritonUnreachable,
    DatabaseUnreachable,
    ServiceUnreachable,
    ServiceError,
    ServiceStartError,
    AddressInUseError,
    TritonError,
    EmbeddedTritonUnavailableError,
    FrameMessageError,
    ServiceUnavailableError,
    CommandLinePasswordError,
    PostgresError,
    TritonClientError,
    TritonInferenceError,
    TritonTimeoutError,
    TritonUnavailableError,
    BatchAbandonedError,
    DeadLetterError,
    Outage,
]


@pytest.mark.parametrize("error", PROJECT_ERRORS, ids=lambda e: e.__name__)
def test_every_project_error_has_the_root(error: type[Exception]) -> None:
    assert issubclass(error, SteelError)


def test_builtin_bases_are_kept_for_callers_that_catch_them() -> None:
    assert issubclass(FrameMessageError, ValueError)
    assert issubclass(ServiceUnavailableError, LookupError)
    assert issubclass(TritonClientError, RuntimeError)


def test_external_service_errors_are_the_ones_steel_work_reports_unavailable() -> None:
    # steel work reports these as "service unavailable"; the batch abort prints its own message.
    assert issubclass(ServiceUnavailableError, ExternalServiceError)
    assert issubclass(TritonClientError, ExternalServiceError)
    assert issubclass(PostgresError, ExternalServiceError)
    assert not issubclass(CommandLinePasswordError, ExternalServiceError)  # a usage error: no retry
    assert not issubclass(BatchAbandonedError, ExternalServiceError)
    assert not issubclass(Outage, ExternalServiceError)
    # One "no Triton to talk to": the embedded launcher's verdict is the client's TritonUnavailableError.
    assert issubclass(EmbeddedTritonUnavailableError, TritonUnavailableError)


def test_lifecycle_commands_name_the_service_that_did_not_answer() -> None:
    from steelcore import exit_codes

    for unreachable in (TritonUnreachable, DatabaseUnreachable):
        assert issubclass(unreachable, ServiceUnreachable)
        assert unreachable("x").exit_code == exit_codes.UNAVAILABLE
    assert not issubclass(DatabaseUnreachable, TritonUnreachable)
