"""Model versions on the worker side without services (issue 16): the version each answer says judged a
frame is stored with it, the registry view keeps its last roles through errors, and the shadow run
takes its share of committed frames without ever holding production."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fake_clock import FakeClock
from worker_fakes import (
    FAST,
    TOPIC,
    FakeAlarms,
    FakeConsumer,
    FakeDeadLetters,
    FakeInference,
    FakeStore,
    Journal,
    frame_value,
    good_messages,
)

from steelcore.frame_message import decode_frame, decode_image
from steelcore.postgres.model_registry import Roles, shadow_pick
from steelcore.settings import Settings
from steelcore.triton.ensemble_client import TritonEnsembleClient
from steelcore.triton.exceptions import TritonInferenceError
from steelcore.triton.inference_result import EnsembleResult
from workers.alarm_rules import AlarmRule
from workers.frame_batch import ValidFrame, build_records
from workers.model_roles import RoleWatch
from workers.shadow_runner import ShadowRunner, shadow_rows
from workers.worker_loop import InferenceWorker
from workers.worker_metrics import WorkerMetrics

# --- Triton answers ----------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, n: int, versions: np.ndarray | None) -> None:
        self.tensors = {
            "PROBS": np.full((n, 4), 0.25, np.float32),
            "PIXEL_COUNTS": np.zeros((n, 4), np.int64),
            "RLE": np.array([[b""] * 4] * n, dtype=np.object_),
        }
        if versions is not None:
            self.tensors["MODEL_VERSION"] = versions

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.tensors.get(name)


def test_an_answer_says_which_version_judged_each_frame() -> None:
    result = TritonEnsembleClient._result(FakeResponse(3, np.array([[2], [2], [3]], np.int32)))
    assert result.versions is not None and result.versions.tolist() == [2, 2, 3]
    old = TritonEnsembleClient._result(FakeResponse(3, None))
    assert old.versions is None and len(old) == 3


def test_versions_concatenate_and_a_version_less_part_drops_them_all() -> None:
    def part(n: int, versions: list[int] | None) -> EnsembleResult:
        v = None if versions is None else np.array(versions)
        return EnsembleResult(np.zeros((n, 4), np.float32), np.zeros((n, 4), np.int64), [[""] * 4] * n, v)

    joined = EnsembleResult.concatenate([part(1, [1]), part(2, [2, 2])])
    assert joined.versions is not None and joined.versions.tolist() == [1, 2, 2]
    assert EnsembleResult.concatenate([part(1, [1]), part(1, None)]).versions is None


@pytest.mark.parametrize(("outputs", "expected"), [(["PROBS", "MODEL_VERSION"], True), (["PROBS"], False)])
def test_the_version_output_is_requested_only_when_the_model_declares_it(
    outputs: list[str], expected: bool
) -> None:
    client = TritonEnsembleClient("127.0.0.1:1", "grpc")
    try:
        config = SimpleNamespace(
            config=SimpleNamespace(max_batch_size=4, output=[SimpleNamespace(name=n) for n in outputs])
        )
        client._grpc = SimpleNamespace(get_model_config=lambda name: config, close=lambda: None)
        assert client.reports_version() is expected and client.max_batch_size() == 4
        _, requested = client._request(np.zeros((1, 256, 1600), np.uint8))
        assert ("MODEL_VERSION" in [o.name() for o in requested]) is expected
    finally:
        client.close()


def valid_frames(n: int) -> list[ValidFrame]:
    out = []
    for i in range(n):
        frame = decode_frame(frame_value(i))
        out.append(ValidFrame(None, frame.header, decode_image(frame), 0.0, frame.image))
    return out


def test_records_carry_the_label_of_the_version_that_judged_each_frame() -> None:
    frames = valid_frames(2)
    result = EnsembleResult(np.zeros((2, 4), np.float32), np.zeros((2, 4), np.int64), [[""] * 4] * 2)
    rule = AlarmRule.from_settings(Settings())
    now = datetime.now(UTC)
    records, _, _ = build_records(
        frames, result, rule, received_at=now, infer_s=0.1, model_name="default", model_version="x",
        labels=[("default", "1"), ("synthetic", "2")],
    )  # fmt: skip
    assert [(r.model_name, r.model_version) for r in records] == [("default", "1"), ("synthetic", "2")]
    plain, _, _ = build_records(
        frames, result, rule, received_at=now, infer_s=0.1, model_name="default", model_version="x"
    )
    assert {(r.model_name, r.model_version) for r in plain} == {("default", "x")}


# --- the registry view -------------------------------------------------------------------------


class Registry:
    """A model registry that can fail, counting its reads."""

    def __init__(self) -> None:
        self.roles = Roles(production=1, shadow=None, shadow_share=None)
        self.bundles = {1: "default"}
        self.down = False
        self.reads = {"roles": 0, "bundles": 0}

    def read_roles(self) -> Roles:
        self.reads["roles"] += 1
        if self.down:
            raise ConnectionError("database unreachable")
        return self.roles

    def read_bundles(self) -> dict[int, str]:
        self.reads["bundles"] += 1
        if self.down:
            raise ConnectionError("database unreachable")
        return dict(self.bundles)


def watch(registry: Registry, clock: FakeClock | None = None, fallback: str = "fallback") -> RoleWatch:
    return RoleWatch(registry.read_roles, registry.read_bundles, 5.0, fallback, clock=clock or FakeClock(0.0))


def test_roles_are_read_on_the_period_and_kept_through_an_unreadable_registry() -> None:
    registry, clock = Registry(), FakeClock(0.0)
    view = watch(registry, clock)
    view.poll()
    assert view.roles.production == 1 and view.shadow() is None
    registry.roles = Roles(production=1, shadow=2, shadow_share=0.25)
    clock.now = 4.9
    view.poll()
    assert view.shadow() is None and registry.reads["roles"] == 1  # not due yet
    registry.down = True
    clock.now = 5.0
    view.poll()  # an error is no outage: the last roles stay
    assert view.roles.production == 1 and view.shadow() is None
    registry.down = False
    clock.now = 10.0
    view.poll()
    assert view.shadow() == (2, 0.25)


def test_an_unknown_version_is_looked_up_once_per_period_then_named_by_the_fallback() -> None:
    registry = Registry()
    view = watch(registry)
    view.refresh()
    assert view.label(1) == ("default", "1")
    registry.bundles[2] = "synthetic"  # registered after the last poll, before its first answer
    assert view.label(2) == ("synthetic", "2")
    reads = registry.reads["bundles"]
    assert view.label(7) == ("fallback", "7") and view.label(7) == ("fallback", "7")
    assert registry.reads["bundles"] == reads + 1


def test_a_shadow_equal_to_production_is_no_shadow_run() -> None:
    registry = Registry()
    registry.roles = Roles(production=2, shadow=2, shadow_share=0.5)
    view = watch(registry)
    view.refresh()
    assert view.shadow() is None


# --- the shadow runner -------------------------------------------------------------------------


class ShadowInference:
    """Answers like a cascade at the requested version; can block or fail."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[int, str | None]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False

    def infer_async(self, frames: np.ndarray, *, model_version: str | None = None) -> Future[EnsembleResult]:
        self.gate.wait(10)
        self.calls.append((frames.shape[0], model_version))
        future: Future[EnsembleResult] = Future()
        if self.fail:
            future.set_exception(TritonInferenceError("Request for unknown model: 'steel_cascade' version 9"))
            return future
        n = frames.shape[0]
        versions = np.full(n, int(model_version or 0))
        probs = np.full((n, 4), 0.5, np.float32)
        counts = np.tile(np.array([0, 7, 0, 0], np.int64), (n, 1))
        future.set_result(EnsembleResult(probs, counts, [["", "1 7", "", ""]] * n, versions))
        return future

    def close(self) -> None:
        self.closed = True


class ShadowTable:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, datetime, int], dict[str, Any]] = {}

    def write(self, rows: Sequence[dict[str, Any]]) -> int:
        new = 0
        for row in rows:
            key = (row["frame_id"], row["captured_at"], row["version"])
            if key not in self.rows:  # ON CONFLICT DO NOTHING
                self.rows[key] = row
                new += 1
        return new


def runner(inference: ShadowInference, table: ShadowTable, queue_frames: int = 64) -> ShadowRunner:
    return ShadowRunner(inference, table.write, WorkerMetrics(), queue_frames, timeout_s=5)


def shadow_count(r: ShadowRunner, outcome: str) -> float:
    return r.metrics.value("steel_worker_shadow_frames_total", {"outcome": outcome})


def test_offered_frames_are_judged_at_the_shadow_version_and_stored_once() -> None:
    inference, table = ShadowInference(), ShadowTable()
    r = runner(inference, table)
    r.start()
    try:
        frames = valid_frames(10)
        assert r.offer(frames, 2) == 10
        assert r.wait_idle(10)
        r.offer(frames[:3], 2)  # a redelivered batch
        assert r.wait_idle(10)
    finally:
        r.stop()
    assert {v for _, v in inference.calls} == {"2"} and max(n for n, _ in inference.calls) <= 8
    assert len(table.rows) == 10 and {k[2] for k in table.rows} == {2}
    row = next(iter(table.rows.values()))
    assert row["pixel_counts"] == [0, 7, 0, 0] and row["rles"] == ["", "1 7", "", ""]
    assert shadow_count(r, "stored") == 10 and shadow_count(r, "duplicate") == 3
    assert inference.closed


def test_a_full_queue_drops_frames_and_counts_them_without_waiting() -> None:
    inference, table = ShadowInference(), ShadowTable()
    inference.gate.clear()  # the shadow is stuck on its first request
    r = runner(inference, table, queue_frames=4)
    r.start()
    try:
        frames = valid_frames(12)
        r.offer(frames[:1], 2)
        while r._queue.qsize():  # the first frame is taken into the stuck request
            threading.Event().wait(0.01)
        queued = r.offer(frames[1:], 2)
        assert queued == 4
        assert shadow_count(r, "dropped") == 7
        inference.gate.set()
        assert r.wait_idle(10)
    finally:
        r.stop()
    assert len(table.rows) == 5


def test_a_shadow_version_that_is_not_loaded_only_counts_failures() -> None:
    inference, table = ShadowInference(fail=True), ShadowTable()
    r = runner(inference, table)
    r.start()
    try:
        r.offer(valid_frames(5), 9)
        assert r.wait_idle(10)
    finally:
        r.stop()
    assert shadow_count(r, "failed") == 5 and not table.rows


def test_rows_take_the_version_the_answer_says() -> None:
    frames = valid_frames(1)
    result = EnsembleResult(
        np.zeros((1, 4), np.float32), np.zeros((1, 4), np.int64), [[""] * 4], np.array([3])
    )
    items = [SimpleNamespace(frame_id="f", captured_at=frames[0].header.captured_at, version=2)]
    assert shadow_rows(items, result)[0]["version"] == 3  # type: ignore[arg-type]


# --- the worker ----------------------------------------------------------------------------------


class VersionedInference(FakeInference):
    """The fake ensemble answering with a MODEL_VERSION per frame: ``switch_after`` frames at 1, then 2."""

    def __init__(self, journal: Journal, switch_after: int) -> None:
        super().__init__(journal)
        self.switch_after = switch_after
        self.answered = 0

    def infer_async(self, frames: np.ndarray, *, model_version: str | None = None) -> Future[EnsembleResult]:
        inner = super().infer_async(frames).result()
        n = frames.shape[0]
        versions = np.array([1 if self.answered + k < self.switch_after else 2 for k in range(n)])
        self.answered += n
        future: Future[EnsembleResult] = Future()
        future.set_result(EnsembleResult(inner.probs, inner.pixel_counts, inner.rles, versions))
        return future


class RecordingShadow:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.offered: list[tuple[str, int]] = []

    def offer(self, frames: Sequence[ValidFrame], version: int) -> int:
        self.journal.append("shadow")
        self.offered.extend((f.header.frame_id, version) for f in frames)
        return len(frames)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def versioned_worker(
    messages: list[Any], registry: Registry, switch_after: int = 1000
) -> tuple[InferenceWorker, Journal, dict[str, Any]]:
    journal = Journal()
    parts: dict[str, Any] = {
        "consumer": FakeConsumer(journal, messages),
        "inference": VersionedInference(journal, switch_after),
        "store": FakeStore(journal),
        "alarm_publisher": FakeAlarms(journal),
        "dead_letters": FakeDeadLetters(journal),
        "roles": watch(registry, fallback="settings-name"),  # as RoleWatch.from_engine makes it
        "shadow": RecordingShadow(journal),
    }
    settings = Settings(frames_topic=TOPIC, topic_rotation_s=0, model_name="settings-name")
    worker = InferenceWorker(settings, FAST, **parts)
    worker.setup()
    return worker, journal, parts


def test_a_batch_straddling_a_switch_stores_each_frame_with_its_own_version() -> None:
    registry = Registry()
    registry.bundles[2] = "synthetic"
    worker, _, parts = versioned_worker(good_messages(6), registry, switch_after=4)
    assert worker.run_once() == 6
    rows = parts["store"].rows
    labels = [(rows[k].model_name, rows[k].model_version) for k in sorted(rows)]
    assert labels == [("default", "1")] * 4 + [("synthetic", "2")] * 2
    assert worker.metrics.value("steel_worker_model_version") == 2


def test_without_a_registry_the_answers_version_is_stored_with_the_settings_name() -> None:
    registry = Registry()
    registry.roles, registry.bundles = Roles(None, None, None), {}
    worker, _, parts = versioned_worker(good_messages(2), registry)
    worker.run_once()
    assert {(r.model_name, r.model_version) for r in parts["store"].rows.values()} == {("settings-name", "1")}


def test_the_shadows_share_of_a_batch_is_offered_after_the_commit() -> None:
    registry = Registry()
    registry.roles = Roles(production=1, shadow=2, shadow_share=0.5)
    messages = good_messages(8)
    worker, journal, parts = versioned_worker(messages, registry)
    worker.run_once()
    assert journal.index("commit") < journal.index("shadow")
    ids = sorted(parts["store"].rows)
    expected = [(f, 2) for f in ids if shadow_pick(f, 0.5)]
    assert sorted(parts["shadow"].offered) == expected and 0 < len(expected) < 8


def test_no_shadow_role_offers_nothing() -> None:
    worker, journal, parts = versioned_worker(good_messages(4), Registry())
    worker.run_once()
    assert "shadow" not in journal and parts["shadow"].offered == []


def test_frames_the_shadow_version_judged_as_production_are_not_judged_again() -> None:
    """Promoted a moment ago: the ensemble answers version 2 before this worker's roles say so."""
    registry = Registry()
    registry.roles = Roles(production=1, shadow=2, shadow_share=1.0)
    worker, _, parts = versioned_worker(good_messages(6), registry, switch_after=2)
    worker.run_once()
    ids = sorted(parts["store"].rows)
    assert sorted(parts["shadow"].offered) == [(f, 2) for f in ids[:2]]
