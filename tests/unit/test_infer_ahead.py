"""Inference ahead (WorkerConfig.infer_ahead, the worker's default): the next batch is sent to Triton
before the batch in hand is stored, yet batches are still finished and committed one after the
other in offset order, outages hold them as before, and a worker that dies commits neither."""

from __future__ import annotations

from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from worker_fakes import (
    AHEAD,
    TOPIC,
    FakeInference,
    FakeMessage,
    Journal,
    frame_value,
    good_messages,
    make_worker,
    stage_order,
)

from steelcore.triton.exceptions import TritonUnavailableError
from steelcore.triton.inference_result import EnsembleResult

BATCH = AHEAD.batch_size


class FailsSecondCall(FakeInference):
    """Triton goes away for one request: the one sent ahead."""

    def infer_async(self, frames: np.ndarray) -> Future[EnsembleResult]:
        if self.calls == 1:
            self.calls += 1
            self.journal.append("infer-failed")
            future: Future[EnsembleResult] = Future()
            future.set_exception(TritonUnavailableError("connection refused"))
            return future
        return super().infer_async(frames)


class FramesArriveDuringInference(FakeInference):
    """Triton takes a while: the batches in ``arriving`` reach the consumer, one per request, while
    it works, and the journal says when the worker takes each answer."""

    def __init__(self, journal: Journal, consumer: Any, arriving: list[list[FakeMessage]]) -> None:
        super().__init__(journal)
        self.consumer, self.arriving = consumer, arriving

    def infer_async(self, frames: np.ndarray) -> Future[EnsembleResult]:
        done = super().infer_async(frames)
        arrives = self.arriving.pop(0) if self.arriving else []
        journal, consumer = self.journal, self.consumer

        class Working(Future):  # type: ignore[type-arg]
            def result(self, timeout: float | None = None) -> EnsembleResult:
                consumer.pending.extend(arrives)
                arrives.clear()
                journal.append("answer")
                return done.result()

        return Working()


def fresh(first: int, n: int) -> list[FakeMessage]:
    """Frames captured just now: no backlog, so the batch policy is not catching up."""
    now = datetime.now(UTC)
    return [FakeMessage(frame_value(first + i, captured_at=now), 0, first + i) for i in range(n)]


def offsets_rise(commits: list[dict[tuple[str, int], int]]) -> bool:
    """Every partition's committed offset only ever moves forward."""
    last: dict[tuple[str, int], int] = {}
    for commit in commits:
        for key, offset in commit.items():
            if offset <= last.get(key, -1):
                return False
            last[key] = offset
    return True


def test_the_next_batch_is_sent_to_triton_before_this_one_is_stored() -> None:
    worker, journal, parts = make_worker(good_messages(2 * BATCH), config=AHEAD)
    assert worker.run_once() == BATCH
    assert stage_order(journal) == ["infer", "infer", "store", "alarm", "commit"]
    assert parts["consumer"].commits == [{(TOPIC, 0): 14, (TOPIC, 1): 14}]  # only the batch in hand
    assert worker.run_once() == BATCH  # the batch taken ahead: its answer is already there
    assert stage_order(journal)[5:] == ["store", "alarm", "commit"]
    assert parts["consumer"].commits[1:] == [{(TOPIC, 0): 18, (TOPIC, 1): 18}]
    assert parts["inference"].calls == 2 and len(parts["store"].rows) == 2 * BATCH


def test_a_look_ahead_takes_only_what_already_waits() -> None:
    worker, journal, _parts = make_worker(good_messages(3), config=AHEAD)
    assert worker.run_once() == 3
    assert worker.run_once() == 0  # nothing was waiting: no batch was taken ahead
    assert stage_order(journal) == ["infer", "store", "alarm", "commit"]


def test_a_stop_finishes_the_batch_taken_ahead_and_takes_no_more() -> None:
    worker, _journal, parts = make_worker(good_messages(3 * BATCH), config=AHEAD)
    worker.run_once()
    worker.stop_event.set()
    worker.setup = lambda: None  # type: ignore[method-assign]  # set up by make_worker already
    worker.run()  # returns at once after the batch whose answer was on the way
    assert parts["consumer"].commits == [{(TOPIC, 0): 14, (TOPIC, 1): 14}, {(TOPIC, 0): 18, (TOPIC, 1): 18}]
    assert len(parts["consumer"].pending) == BATCH  # the rest waits, uncommitted, for the next worker


def test_a_triton_outage_on_the_batch_sent_ahead_holds_it_and_asks_again() -> None:
    worker, journal, parts = make_worker(good_messages(2 * BATCH), config=AHEAD)
    worker.inference = parts["inference"] = FailsSecondCall(journal)
    worker.run_once()
    worker.run_once()
    assert stage_order(journal) == [
        *["infer", "infer-failed", "store", "alarm", "commit"],
        *["infer", "store", "alarm", "commit"],
    ]
    assert journal.count("pause") == 1 and journal.count("resume") == 1
    assert len(parts["consumer"].commits) == 2 and offsets_rise(parts["consumer"].commits)
    assert len(parts["store"].rows) == 2 * BATCH


def test_an_outage_of_the_batch_in_hand_keeps_the_commits_in_offset_order() -> None:
    worker, journal, parts = make_worker(good_messages(3 * BATCH), store_failures=2, config=AHEAD)
    while worker.run_once():
        pass
    assert journal.count("store-failed") == 2 and journal.count("commit") == 3
    assert offsets_rise(parts["consumer"].commits)
    assert parts["consumer"].commits[-1] == {(TOPIC, 0): 22, (TOPIC, 1): 22}
    assert len(parts["store"].rows) == 3 * BATCH


def test_a_worker_that_dies_mid_batch_commits_neither_batch() -> None:
    worker, journal, parts = make_worker(
        good_messages(2 * BATCH), store_error=RuntimeError("killed"), config=AHEAD
    )
    with pytest.raises(RuntimeError, match="killed"):
        worker.run_once()
    assert journal.count("infer") == 2  # the batch ahead was already sent ...
    assert parts["consumer"].commits == []  # ... and, like the batch in hand, is redelivered


def test_without_a_backlog_the_next_batch_is_taken_when_triton_answers() -> None:
    """The frames that arrived during the whole inference make the next batch, not the few that
    were there when it was sent (a steady load then gets full batches, not small ones)."""
    worker, journal, parts = make_worker(fresh(0, BATCH + 2), config=AHEAD)
    worker.inference = FramesArriveDuringInference(journal, parts["consumer"], [fresh(BATCH + 2, 5)])
    assert worker.run_once() == BATCH
    assert stage_order(journal)[:4] == ["infer", "answer", "infer", "store"]
    assert worker._ahead is not None and len(worker._ahead.messages) == 2 + 5


def test_while_catching_up_the_next_batch_is_sent_with_the_one_in_hand() -> None:
    worker, journal, parts = make_worker(good_messages(2 * BATCH), config=AHEAD)  # captured long ago
    worker.inference = FramesArriveDuringInference(journal, parts["consumer"], [])
    assert worker.run_once() == BATCH
    assert stage_order(journal)[:4] == ["infer", "infer", "answer", "store"]
