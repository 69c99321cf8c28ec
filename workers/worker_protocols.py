"""What the worker needs of the services it writes to, so tests can pass fakes."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from steelcore.alarm_message import Alarm
from steelcore.postgres.frame_records import FrameRecord, StoreResult
from steelcore.triton.inference_result import EnsembleResult
from workers.frame_batch import Rejected


class Inference(Protocol):
    def infer_async(self, frames: np.ndarray) -> Future[EnsembleResult]: ...
    def close(self) -> None: ...


class Store(Protocol):
    def write_batch(self, batch: Sequence[FrameRecord]) -> StoreResult: ...
    def mark_published(self, published: Sequence[tuple[str, int, str]]) -> int: ...
    def close(self) -> None: ...


class AlarmPublisher(Protocol):
    def publish(self, alarms: Sequence[Alarm]) -> list[str]: ...


class DeadLetterSink(Protocol):
    def send(self, rejects: Sequence[Rejected]) -> list[Rejected]: ...
    def close(self) -> None: ...
