"""`steel work`'s exit codes by what ends the worker: the project's service errors and the client
libraries' connection errors mean UNAVAILABLE; any other project error is not swallowed."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from redis import RedisError
from sqlalchemy.exc import OperationalError

from steelcore import exit_codes
from steelcore.service_urls import ServiceUnavailableError
from steelcore.triton.exceptions import TritonInferenceError, TritonUnavailableError
from workers import work_cli, worker_loop
from workers.worker_errors import BatchAbandonedError, DeadLetterError


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _run_raising(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> int:
    class FailingWorker:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.stop_event = None
            self.teardown_hung = False

        def run(self) -> None:
            raise error

    monkeypatch.setattr(worker_loop, "InferenceWorker", FailingWorker)
    parser = argparse.ArgumentParser()
    work_cli.add_arguments(parser)
    return work_cli.run(parser.parse_args(["--metrics-port", "0"]))


@pytest.mark.parametrize(
    "error",
    [
        ServiceUnavailableError("no stack"),
        TritonUnavailableError("refused"),
        TritonInferenceError("bad reply"),
        OperationalError("select 1", {}, Exception("refused")),
        RedisError("refused"),
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
        BatchAbandonedError("grace over"),
        OSError("address in use"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_service_errors_exit_unavailable(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    assert _run_raising(monkeypatch, error) == exit_codes.UNAVAILABLE


def test_other_project_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DeadLetterError):
        _run_raising(monkeypatch, DeadLetterError("not delivered"))
