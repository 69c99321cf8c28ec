"""Worker logic without services: offsets, validation, records, backoff, and the batch life with fakes
(outages hold the batch, nothing is committed before the durable steps, nothing is dropped)."""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from worker_fakes import (
    T0,
    TOPIC,
    FakeMessage,
    frame_value,
    good_messages,
    make_worker,
    records_of,
    stage_order,
)

from steelcore import rle
from steelcore.frame_message import decode_frame
from steelcore.kafka.dead_letter import DLQ_HEADER_PREFIX, dead_letter_headers
from steelcore.triton.inference_result import EnsembleResult
from workers.alarm_rules import AlarmRule
from workers.backoff import Backoff
from workers.frame_batch import (
    Rejected,
    ValidFrame,
    build_records,
    defects_of,
    next_offsets,
    validate_message,
)
from workers.worker_errors import BatchAbandonedError

# --- pure logic ----------------------------------------------------------------------------------


def test_next_offsets_are_the_highest_offset_plus_one_per_partition() -> None:
    messages = [
        FakeMessage(b"", 1, 7),
        FakeMessage(b"", 0, 3),
        FakeMessage(b"", 1, 5),
        FakeMessage(b"", 0, 4),
        FakeMessage(None, 2, 99, error=object()),  # an error event carries no offset to commit
    ]
    assert next_offsets(messages) == {(TOPIC, 0): 5, (TOPIC, 1): 8}
    assert next_offsets([]) == {}


def test_a_valid_frame_decodes_to_its_pixels() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (256, 1600), dtype=np.uint8)
    checked = validate_message(FakeMessage(frame_value(1, pixels), 0, 0), max_bytes=8 << 20)
    assert isinstance(checked, ValidFrame)
    assert np.array_equal(checked.pixels, pixels) and checked.header.frame_id == "L1-cam-1-00000001"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"garbage bytes", "bad magic"),
        (None, "tombstone"),
        (frame_value(1)[:-40], "not a decodable png"),
        (frame_value(1, width=200, height=200), "ensemble takes 1600x256"),
        (frame_value(1) + b"\0" * 100, None),  # trailing bytes after a PNG still decode
    ],
)
def test_unusable_messages_are_rejected_with_a_reason(value: bytes | None, reason: str | None) -> None:
    checked = validate_message(FakeMessage(value, 0, 0), max_bytes=8 << 20)
    if reason is None:
        assert isinstance(checked, ValidFrame)
    else:
        assert isinstance(checked, Rejected) and reason in checked.reason


def test_oversized_messages_are_rejected_before_decoding() -> None:
    checked = validate_message(FakeMessage(frame_value(1), 0, 0), max_bytes=100)
    assert isinstance(checked, Rejected) and "exceeds the limit of 100" in checked.reason


def test_dead_letter_headers_keep_the_original_and_add_reason_and_source() -> None:
    headers = dict(dead_letter_headers(FakeMessage(b"x", 3, 42), "bad magic", "w1", T0))
    assert headers["frame_id"] == b"x"
    assert headers[DLQ_HEADER_PREFIX + "reason"] == b"bad magic"
    assert headers[DLQ_HEADER_PREFIX + "topic"] == TOPIC.encode()
    assert headers[DLQ_HEADER_PREFIX + "partition"] == b"3"
    assert headers[DLQ_HEADER_PREFIX + "offset"] == b"42"
    assert datetime.fromisoformat(headers[DLQ_HEADER_PREFIX + "time"].decode()) == T0


def test_defects_get_area_and_inclusive_bounding_box_from_the_mask() -> None:
    mask = np.zeros((256, 1600), np.uint8)
    mask[10:20, 100:150] = 1
    mask[200, 1599] = 1
    found = defects_of([0.1, 0.7, 0.2, 0.3], ["", rle.encode(mask), "", ""])
    assert len(found) == 1
    assert (found[0].class_id, found[0].area_px, found[0].bbox) == (2, 501, (100, 10, 1599, 200))
    assert found[0].probability == pytest.approx(0.7)


def test_records_and_alarms_follow_the_rule() -> None:
    frames = [validate_message(FakeMessage(frame_value(i), 0, i), 8 << 20) for i in range(3)]
    assert all(isinstance(f, ValidFrame) for f in frames)
    mask = np.zeros((256, 1600), np.uint8)
    mask[0:10, 0:30] = 1  # 300 px
    code = rle.encode(mask)
    result = EnsembleResult(
        probs=np.array([[0.9, 0, 0, 0], [0.4, 0, 0, 0], [0.9, 0, 0, 0]], np.float32),
        pixel_counts=np.array([[300, 0, 0, 0], [300, 0, 0, 0], [0, 0, 0, 0]]),
        rles=[[code, "", "", ""], [code, "", "", ""], ["", "", "", ""]],
    )
    rule = AlarmRule((0.5,) * 4, (200,) * 4)
    records, alarms, rejects = build_records(
        frames,  # type: ignore[arg-type]
        result,
        rule,
        received_at=T0,
        infer_s=0.05,
        model_name="default",
        model_version="7",
    )
    assert not rejects
    assert [len(r.defects) for r in records] == [1, 1, 0]
    assert [(a.frame_id, a.class_id, a.alarm_key) for a in alarms] == [
        ("L1-cam-1-00000000", 1, "L1-cam-1-00000000:1")
    ]  # frame 1 below the probability, frame 2 has no defect
    assert [len(r.alarms) for r in records] == [1, 0, 0]
    assert records[0].infer_ms == pytest.approx(50.0) and records[0].class_probs == pytest.approx(
        (0.9, 0, 0, 0)
    )


def test_a_result_that_cannot_be_stored_rejects_only_its_frame() -> None:
    frames = [validate_message(FakeMessage(frame_value(i), 0, i), 8 << 20) for i in range(2)]
    result = EnsembleResult(
        probs=np.array([[float("nan"), 0, 0, 0], [0.1, 0, 0, 0]], np.float32),
        pixel_counts=np.zeros((2, 4), np.int64),
        rles=[["", "", "", ""], ["", "", "", ""]],
    )
    records, _, rejects = records_of(frames, result, T0)  # type: ignore[arg-type]
    assert [r.frame_id for r in records] == ["L1-cam-1-00000001"]
    assert len(rejects) == 1 and "not storable" in rejects[0].reason


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 6.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_backoff_jitter_stays_below_the_cap_and_never_overflows() -> None:
    backoff = Backoff(0.1, 2.0, jitter=0.25, rng=random.Random(1))
    delays = [backoff.next() for _ in range(5000)]  # a long outage
    assert all(0 < d <= 2.0 for d in delays)
    assert min(delays[10:]) >= 2.0 * 0.75
    assert len({round(d, 6) for d in delays[10:]}) > 100  # jittered, not lockstep


# --- the batch life with fakes -------------------------------------------------------------------


def test_happy_batch_is_stored_alarmed_then_committed_once() -> None:
    worker, journal, parts = make_worker(good_messages(4))
    assert worker.run_once() == 4
    assert stage_order(journal) == ["infer", "store", "alarm", "commit"]
    assert parts["consumer"].commits == [{(TOPIC, 0): 12, (TOPIC, 1): 12}]
    assert len(parts["store"].rows) == 4 and len(parts["alarm_publisher"].published) == 4
    assert len(parts["store"].published) == 4  # alarms marked published in the outbox
    # The received image travels to the store unchanged (kept there for defective frames).
    sent = {decode_frame(m.value()).header.frame_id: decode_frame(m.value()).image for m in good_messages(4)}
    assert {fid: r.image for fid, r in parts["store"].rows.items()} == sent
    assert worker.metrics.value("steel_worker_frames_total", {"outcome": "stored"}) == 4
    assert "pause" not in journal


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ({"infer_failures": 3}, ["infer-failed"] * 3 + ["infer", "store", "alarm", "commit"]),
        ({"store_failures": 2}, ["infer", "store-failed", "store-failed", "store", "alarm", "commit"]),
        ({"alarm_failures": 2}, ["infer", "store", "alarm-failed", "alarm-failed", "alarm", "commit"]),
    ],
)
def test_an_outage_holds_the_batch_pauses_and_resumes_without_redoing_done_steps(
    failure: dict[str, int], expected: list[str]
) -> None:
    worker, journal, parts = make_worker(good_messages(3), **failure)
    worker.run_once()
    assert stage_order(journal) == expected
    assert journal.count("pause") == 1 and journal.count("resume") == 1
    assert journal.index("pause") < journal.index("commit") < journal.index("resume")
    assert parts["consumer"].commits == [{(TOPIC, 0): 12, (TOPIC, 1): 11}]
    assert worker.metrics.value("steel_worker_paused") == 0
    stage = next(iter(failure)).split("_")[0]
    assert worker.metrics.value("steel_worker_errors_total", {"stage": stage}) == next(iter(failure.values()))


def test_corrupt_frames_are_dead_lettered_before_commit_and_the_rest_is_stored() -> None:
    messages = [*good_messages(2), FakeMessage(b"not a frame", 0, 50)]
    worker, journal, parts = make_worker(messages)
    worker.run_once()
    assert stage_order(journal) == ["infer", "dead_letter", "store", "alarm", "commit"]
    assert [r.message.offset() for r in parts["dead_letters"].sent] == [50]
    assert parts["consumer"].commits == [{(TOPIC, 0): 51, (TOPIC, 1): 11}]
    assert len(parts["store"].rows) == 2
    assert worker.metrics.value("steel_worker_frames_total", {"outcome": "dead_lettered"}) == 1


def test_a_redelivered_batch_is_a_duplicate_but_its_alarms_are_published_again() -> None:
    worker, _journal, parts = make_worker(good_messages(2))
    worker.run_once()
    parts["consumer"].pending = good_messages(2)  # the same messages again (e.g. after a crash)
    worker.run_once()
    assert len(parts["store"].rows) == 2
    assert worker.metrics.value("steel_worker_frames_total", {"outcome": "duplicate"}) == 2
    ids = [a.alarm_key for a in parts["alarm_publisher"].published]
    assert len(ids) == 4 and len(set(ids)) == 2  # same stable ids, recognisable as repeats


def test_a_stop_during_a_lasting_outage_abandons_the_batch_uncommitted() -> None:
    worker, journal, parts = make_worker(good_messages(2), infer_failures=10**6)
    worker.stop_event.set()
    with pytest.raises(BatchAbandonedError, match="left uncommitted"):
        worker.run_once()
    assert parts["consumer"].commits == [] and "store" not in journal


def test_partitions_revoked_during_an_outage_are_not_committed() -> None:
    worker, journal, parts = make_worker(good_messages(4), store_failures=1)
    consumer = parts["consumer"]
    # The first two consumes fetch the batch (a wait for one frame, then those already waiting);
    # partition 1 goes at the third, while the batch is held.
    consumer.revoke = (3, 1)
    worker.run_once()
    assert consumer.commits == [{(TOPIC, 0): 12}]
    assert {tp.partition for tp in consumer.assigned} == {0} and consumer.paused == set()
    assert journal.count("pause") == 2  # the new assignment was paused again while the batch was held


def test_a_batch_read_before_a_broker_restart_is_stored_but_its_offsets_are_not_committed() -> None:
    """The embedded broker restarts (new cluster id, empty log) between the consume and the commit
    of a batch: its offsets (of the old log, or old positions in the new one) would make the group
    skip the start of the new log. The batch is stored, not committed, and every assigned
    partition is read again from the beginning; the next batch is committed as usual."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    worker, journal, parts = make_worker([])
    consumer = parts["consumer"]
    consumer.pending = good_messages(4)  # offsets 10-11 on partitions 0 and 1
    real_consume = consumer.consume

    def consume_then_restart(num_messages: int, timeout: float) -> list[FakeMessage]:
        out = real_consume(num_messages, timeout)
        consumer.cluster_id = "steel-second"
        return out

    consumer.consume = consume_then_restart
    assert worker.run_once() == 4
    assert len(parts["store"].rows) == 4 and len(parts["alarm_publisher"].published) == 4
    assert consumer.commits == []
    assert sorted(consumer.seeks) == [(0, OFFSET_BEGINNING), (1, OFFSET_BEGINNING)]
    assert worker.metrics.value("steel_worker_broker_restarts_total") == 1

    # The group rejoins the new broker: the assignment starts at the new log's beginning, whatever
    # offset a refused commit may have left there.
    consumer.callbacks["on_revoke"](consumer, consumer.assigned)
    consumer.callbacks["on_assign"](consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    assert [tp.offset for tp in consumer.assigned] == [OFFSET_BEGINNING, OFFSET_BEGINNING]
    consumer.consume = real_consume
    consumer.pending = [FakeMessage(frame_value(100 + i), i % 2, i // 2) for i in range(4)]  # the new log
    assert worker.run_once() == 4
    assert consumer.commits == [{(TOPIC, 0): 2, (TOPIC, 1): 2}]
    assert journal.count("seek") == 2


def test_a_restart_noticed_between_batches_rewinds_before_the_next_consume() -> None:
    """Between batches the worker asks the broker's cluster id; on a new one it seeks every
    assigned partition to the start of the new log before consuming, and a seek the consumer
    refuses is retried (its partition's offsets uncommitted meanwhile)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException

    worker, journal, parts = make_worker([])
    consumer = parts["consumer"]
    refusals = [1, 1]
    real_seek = consumer.seek

    def seek(partition: Any) -> None:
        if partition.partition == 1 and refusals:
            refusals.pop()
            raise KafkaException("Local: Erroneous state")
        real_seek(partition)

    consumer.seek = seek
    consumer.cluster_id = "steel-second"
    worker._next_broker_check = 0.0
    consumer.pending = [FakeMessage(frame_value(i), i % 2, i // 2) for i in range(4)]
    assert worker.run_once() == 4
    assert journal.index("seek") < journal.index("infer")
    # Partition 1 refused its seek at the check and again before the commit: not committed.
    assert consumer.seeks == [(0, OFFSET_BEGINNING)]
    assert consumer.commits == [{(TOPIC, 0): 2}]
    consumer.pending = [FakeMessage(frame_value(10), 0, 2)]
    assert worker.run_once() == 1  # the seek is tried again before the next consume
    assert consumer.seeks == [(0, OFFSET_BEGINNING), (1, OFFSET_BEGINNING)]
    assert consumer.commits[-1] == {(TOPIC, 0): 3}
    assert worker.metrics.value("steel_worker_broker_restarts_total") == 1


def test_a_non_transient_error_propagates_without_commit() -> None:
    worker, _journal, parts = make_worker(good_messages(2), store_error=ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        worker.run_once()
    assert parts["consumer"].commits == []
    worker.teardown()
    assert parts["consumer"].closed


class FakeJanitor:
    """The floor a janitor would have proven; checks are counted, nothing is deleted."""

    def __init__(self, floor: int) -> None:
        self.floor, self.checks, self.closed = floor, 0, False

    def delete_consumed(self) -> None:
        self.checks += 1

    def close(self) -> None:
        self.closed = True


def test_without_rotation_the_worker_subscribes_to_the_topic_itself() -> None:
    _worker, _journal, parts = make_worker([])
    assert parts["consumer"].subscriptions == [[TOPIC]]


def test_with_rotation_the_worker_assigns_itself_its_share_of_the_buckets_without_a_rebalance() -> None:
    from confluent_kafka import TopicPartition

    janitor = FakeJanitor(floor=41)
    worker, _journal, parts = make_worker(good_messages(2), rotation_s=10.0, janitor=janitor)
    consumer = parts["consumer"]
    assert janitor.checks == 1  # the floor was established before the first subscription
    members = f"{TOPIC}.members"
    assert consumer.subscriptions == [[members]]  # one topic that never changes: no rebalance for buckets
    consumer.topics = {members: 2, f"{TOPIC}.40": 2, f"{TOPIC}.41": 2, f"{TOPIC}.42": 2, "other.41": 2}
    consumer.callbacks["on_assign"](consumer, [TopicPartition(members, 1)])
    # Partition 1 of each bucket from the floor up, from the group's committed offsets (-1001).
    assert consumer.assigns[-1] == [(f"{TOPIC}.41", 1, -1001), (f"{TOPIC}.42", 1, -1001)]
    rebalances = worker._rebalances

    # A new bucket joins at the next listing; the partitions in hand go on from their positions.
    consumer.positions[(f"{TOPIC}.41", 1)] = 7
    consumer.topics[f"{TOPIC}.43"] = 2
    worker._next_topic_list = 0.0
    worker.run_once()
    assert consumer.assigns[-1] == [
        (f"{TOPIC}.41", 1, 7),
        (f"{TOPIC}.42", 1, -1001),
        (f"{TOPIC}.43", 1, -1001),
    ]

    # Just after a broker restart was noticed, a partition that delivered nothing yet starts from
    # the new log's beginning, not from an offset the new broker may hold from the old log.
    worker._rewind_until = time.monotonic() + 60
    consumer.topics[f"{TOPIC}.44"] = 2
    worker._next_topic_list = 0.0
    worker.run_once()
    assert consumer.assigns[-1] == [(f"{TOPIC}.41", 1, 7)] + [(f"{TOPIC}.{b}", 1, -2) for b in (42, 43, 44)]
    worker._rewind_until = 0.0
    del consumer.topics[f"{TOPIC}.44"]

    # The floor moves: the drained bucket leaves the assignment at the next listing.
    janitor.floor = 43
    worker._next_topic_list = 0.0
    worker.run_once()
    assert consumer.assigns[-1] == [(f"{TOPIC}.43", 1, -1001)]
    assert consumer.subscriptions == [[members]] and worker._rebalances == rebalances

    # Revoked, the worker holds nothing and assigns nothing until the group gives it partitions again.
    consumer.callbacks["on_revoke"](consumer, [TopicPartition(members, 1)])
    consumer.topics[f"{TOPIC}.44"] = 2
    worker._next_topic_list = 0.0
    worker.run_once()
    assert consumer.assigned == []
    worker.teardown()
    assert janitor.closed and consumer.closed


def test_with_rotation_a_worker_held_by_an_outage_still_drops_the_buckets_below_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The janitors delete a bucket some seconds after the floor passes it, and a consumer still
    assigned a deleted topic crashes, paused or not: a long outage must not keep one assigned."""
    from confluent_kafka import TopicPartition

    import workers.consumer_session as consumer_session

    monkeypatch.setattr(consumer_session, "SUBSCRIPTION_REFRESH_MS", 0)  # list at every poll
    janitor = FakeJanitor(floor=41)
    worker, journal, parts = make_worker(good_messages(2), store_failures=3, rotation_s=10.0, janitor=janitor)
    consumer = parts["consumer"]
    consumer.topics = {f"{TOPIC}.members": 2, f"{TOPIC}.41": 2, f"{TOPIC}.42": 2}
    consumer.callbacks["on_assign"](consumer, [TopicPartition(f"{TOPIC}.members", 0)])
    consumer.positions[(f"{TOPIC}.42", 0)] = 5  # the batch in hand came from bucket 42

    store = parts["store"]
    failing_write = store.write_batch
    held_with: list[set[str]] = []  # the bucket topics assigned at each try of the write
    paused: list[set[int]] = []

    def write_batch(batch: Any) -> Any:
        held_with.append({tp.topic for tp in consumer.assigned})
        paused.append(set(consumer.paused))
        janitor.floor = 42  # bucket 41 proven consumed while the database is down
        return failing_write(batch)

    store.write_batch = write_batch
    worker.run_once()
    assert journal.count("store-failed") == 3 and "store" in journal  # held, then stored
    assert held_with[0] == {f"{TOPIC}.41", f"{TOPIC}.42"}
    assert held_with[1:] == [{f"{TOPIC}.42"}] * 3  # dropped during the hold, not after it
    assert paused[1:] == [{0}] * 3  # and the new assignment paused again while held
    assert consumer.assigns[-1] == [(f"{TOPIC}.42", 0, 5)]  # the held bucket keeps its position
    worker.teardown()


def test_with_rotation_an_assignment_is_never_made_from_a_stale_topic_list() -> None:
    from confluent_kafka import TopicPartition

    from steelcore.kafka.exceptions import KafkaException

    worker, _journal, parts = make_worker([], rotation_s=10.0, janitor=FakeJanitor(floor=1))
    consumer = parts["consumer"]
    consumer.topics = {f"{TOPIC}.members": 2, f"{TOPIC}.1": 2}
    worker._next_topic_list = 0.0
    worker.run_once()  # listed once: frames.1 known
    del consumer.topics[f"{TOPIC}.1"]  # deleted since; the broker does not answer the next listing

    def unanswered(timeout: float) -> Any:
        raise KafkaException("timed out")

    consumer.list_topics = unanswered
    consumer.callbacks["on_assign"](consumer, [TopicPartition(f"{TOPIC}.members", 0)])
    assert consumer.assigns[-1] == []  # nothing from the stale list
    del consumer.list_topics  # answering again: the next listing assigns what exists
    consumer.topics[f"{TOPIC}.2"] = 2
    worker._next_topic_list = 0.0
    worker.run_once()
    assert consumer.assigns[-1] == [(f"{TOPIC}.2", 0, -1001)]
    worker.teardown()


def test_with_rotation_a_lost_membership_topic_is_created_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.consumer_session as consumer_session

    created: list[list[str]] = []
    monkeypatch.setattr(
        consumer_session, "ensure_topics", lambda _admin, names, *_a, **_k: created.append(names)
    )
    monkeypatch.setattr(consumer_session, "new_admin", lambda _settings: None)
    worker, _journal, parts = make_worker([], rotation_s=10.0, janitor=FakeJanitor(floor=1))
    consumer = parts["consumer"]
    consumer.topics = {f"{TOPIC}.members": 2}
    worker._next_topic_list = 0.0
    worker.run_once()
    assert created == []
    consumer.topics = {f"{TOPIC}.1": 2}  # a restarted memory broker: the producers' bucket only
    worker._next_topic_list = 0.0
    worker.run_once()
    assert created == [[f"{TOPIC}.members"]]
    worker.teardown()


def test_a_close_that_hangs_is_left_behind_and_the_rest_still_close(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import workers.worker_wiring as worker_wiring

    monkeypatch.setattr(worker_wiring, "TEARDOWN_STEP_S", 0.2)
    worker, _journal, parts = make_worker(good_messages(1))
    release = threading.Event()
    parts["consumer"].close = lambda: release.wait(30)  # librdkafka's close hanging after a broker restart
    closed: list[str] = []
    parts["store"].close = lambda: closed.append("store")
    started = time.monotonic()
    worker.teardown()
    assert time.monotonic() - started < 5
    assert worker.teardown_hung
    assert closed == ["store"]  # the steps after the hung one still ran
    release.set()
    healthy, _j, _p = make_worker(good_messages(1))
    healthy.teardown()
    assert not healthy.teardown_hung


def test_after_a_broker_restart_a_reassigned_partition_resumes_where_this_worker_committed() -> None:
    """Just after a restart the broker may report a committed offset it refused from the old log;
    within the rewind window the worker trusts only what it committed in the new log itself."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    worker, _journal, parts = make_worker(good_messages(1))
    worker._rewind_until = time.monotonic() + 60
    worker._committed_in_log = {(TOPIC, 0): 4}
    given: list[Any] = []
    parts["consumer"].assign = lambda partitions: given.extend(partitions)
    stale = 8  # what the broker would start partition 0 at
    worker._on_assign(parts["consumer"], [TopicPartition(TOPIC, 0, stale), TopicPartition(TOPIC, 1, stale)])
    assert [(tp.partition, tp.offset) for tp in given] == [(0, 4), (1, OFFSET_BEGINNING)]
