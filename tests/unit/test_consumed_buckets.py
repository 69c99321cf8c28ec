"""The consumed-bucket deleter and its drain probe against a fake broker that reports watermarks as Tansu does
(last batch's base offset + 1), so "committed == high watermark" alone would be wrong."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

from steelcore.kafka.consumed_buckets import ConsumedBucketDeleter, DrainProbe
from steelcore.settings import Settings

ROTATION_S = 10.0
GRACE_S = 2.0


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def error(self) -> None:
        return None


class FakeBroker:
    """Topics of partitions holding batches of records; the group's committed offsets."""

    def __init__(self) -> None:
        self.batches: dict[tuple[str, int], list[int]] = {}  # (topic, partition) -> batch sizes
        self.topics: dict[str, int] = {}  # name -> partitions
        self.committed: dict[tuple[str, int], int] = {}
        self.deleted: list[str] = []
        self.created: list[str] = []

    def add_topic(self, name: str, partitions: int = 2) -> None:
        self.topics[name] = partitions

    def write(self, topic: str, partition: int, *batch_sizes: int) -> None:
        self.batches.setdefault((topic, partition), []).extend(batch_sizes)

    def end(self, topic: str, partition: int) -> int:
        return sum(self.batches.get((topic, partition), []))

    def tansu_high_watermark(self, topic: str, partition: int) -> int:
        sizes = self.batches.get((topic, partition), [])
        return sum(sizes[:-1]) + 1 if sizes else 0


class FakeAdmin:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    def list_topics(self, timeout: float) -> Any:
        return SimpleNamespace(
            topics={
                name: SimpleNamespace(partitions={p: None for p in range(n)}, error=None)
                for name, n in self.broker.topics.items()
            }
        )

    def create_topics(self, new_topics: list[Any], **_: Any) -> dict[str, Future]:
        out = {}
        for topic in new_topics:
            self.broker.add_topic(topic.topic, topic.num_partitions)
            self.broker.created.append(topic.topic)
            future: Future = Future()
            future.set_result(None)
            out[topic.topic] = future
        return out

    def delete_topics(self, names: list[str], **_: Any) -> dict[str, Future]:
        out = {}
        for name in names:
            self.broker.topics.pop(name)
            self.broker.deleted.append(name)
            future: Future = Future()
            future.set_result(None)
            out[name] = future
        return out


class FakeProbeConsumer:
    def __init__(self, broker: FakeBroker, answers: bool = True) -> None:
        self.broker, self.answers = broker, answers
        self.assigned: list[TopicPartition] = []
        self.assignments = 0

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.broker.committed.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, self.broker.tansu_high_watermark(tp.topic, tp.partition)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)
        self.assignments += 1

    def unassign(self) -> None:
        self.assigned = []

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if not self.answers:
            return []
        out = []
        for tp in self.assigned:
            end = self.broker.end(tp.topic, tp.partition)
            out += [FakeMessage(tp.topic, tp.partition, o) for o in range(tp.offset, end)]
        self.assigned = [
            TopicPartition(tp.topic, tp.partition, self.broker.end(tp.topic, tp.partition))
            for tp in self.assigned
        ]
        return out

    def close(self) -> None:
        pass


def make_janitor(broker: FakeBroker, now: list[float], answers: bool = True) -> ConsumedBucketDeleter:
    settings = Settings(
        frames_topic="fr", truth_topic="tr", topic_close_grace_s=GRACE_S, topic_janitor_interval_s=1.0
    )
    probe = DrainProbe(
        FakeProbeConsumer(broker, answers), exact_watermarks=False, timeout_s=0.3, settle_s=0.05
    )
    return ConsumedBucketDeleter(
        settings, ROTATION_S, admin=FakeAdmin(broker), probe=probe, clock=lambda: now[0]
    )


def drained(broker: FakeBroker, *partitions: tuple[str, int], answers: bool = True) -> dict:
    return DrainProbe(
        FakeProbeConsumer(broker, answers), exact_watermarks=False, timeout_s=0.3, settle_s=0.05
    ).drained(list(partitions))


def test_the_probe_proves_consumption_where_the_watermark_cannot() -> None:
    broker = FakeBroker()
    broker.write("fr.1", 0, 5, 3)  # records 0..7 in two batches: Tansu reports high watermark 6
    broker.committed[("fr.1", 0)] = 8
    assert broker.tansu_high_watermark("fr.1", 0) == 6
    assert drained(broker, ("fr.1", 0)) == {("fr.1", 0): True}
    broker.committed[("fr.1", 0)] = 7  # one record left, yet the watermark (6) is below the commit
    assert drained(broker, ("fr.1", 0)) == {("fr.1", 0): False}
    broker.committed[("fr.1", 0)] = 5  # the watermark alone shows records left
    assert drained(broker, ("fr.1", 0)) == {("fr.1", 0): False}


def test_without_a_commit_only_an_empty_partition_counts_as_consumed() -> None:
    broker = FakeBroker()
    broker.write("fr.1", 1, 1)
    assert drained(broker, ("fr.1", 0), ("fr.1", 1)) == {("fr.1", 0): True, ("fr.1", 1): False}


def test_a_probe_that_hears_nothing_decides_nothing() -> None:
    broker = FakeBroker()
    broker.write("fr.1", 0, 4)
    broker.committed[("fr.1", 0)] = 4
    assert drained(broker, ("fr.1", 0), answers=False) == {("fr.1", 0): None}


def test_consumed_buckets_leave_the_floor_and_are_deleted_only_after_the_retire_delay() -> None:
    broker = FakeBroker()
    for b in (10, 11, 12, 13):
        broker.add_topic(f"fr.{b}")
    broker.write("fr.10", 0, 4)
    broker.committed[("fr.10", 0)] = 4  # bucket 10 consumed; 11 holds a record nobody committed
    broker.write("fr.11", 1, 1)
    now = [12 * ROTATION_S + 5.0]  # bucket 12 is current, 11 closed (its grace is over), 13 pre-created
    janitor = make_janitor(broker, now)

    report = janitor.delete_consumed()
    assert (report.floor, report.proven, report.deleted) == (11, [10], [])
    now[0] += janitor.retire_after_s - 0.1
    assert janitor.delete_consumed().deleted == []  # workers may still be dropping bucket 10
    now[0] += 0.2
    assert janitor.delete_consumed().deleted == ["fr.10"] and "fr.10" not in broker.topics

    broker.committed[("fr.11", 1)] = 1
    report = janitor.delete_consumed()
    assert (report.floor, report.proven) == (12, [11])
    now[0] += janitor.retire_after_s
    assert janitor.delete_consumed().deleted == ["fr.11"]
    # The current bucket and those after it stay (fr.14 and the truth buckets: see the next test).
    assert {"fr.12", "fr.13", "fr.14"} <= set(broker.topics) and "fr.11" not in broker.topics


def test_a_floor_move_creates_the_next_two_buckets_before_the_worker_resubscribes() -> None:
    broker = FakeBroker()
    for b in (11, 12, 13):
        broker.add_topic(f"fr.{b}")
    now = [12 * ROTATION_S + 5.0]  # bucket 12 is current; 11 closed, not yet consumed
    broker.write("fr.11", 0, 3)
    janitor = make_janitor(broker, now)
    first = janitor.delete_consumed()
    assert (first.floor, first.created) == (11, [])  # the worker's first subscription: no move
    assert janitor.delete_consumed().created == []  # nothing proven: no move, nothing created

    broker.committed[("fr.11", 0)] = 3
    report = janitor.delete_consumed()
    assert report.floor == 12
    # In one rebalance with the floor move; the producers' next boundary then creates nothing.
    assert sorted(report.created) == ["fr.14", "tr.13", "tr.14"]  # fr.13 existed already
    assert broker.topics["fr.14"] == janitor.settings.frames_partitions
    assert janitor.delete_consumed().created == []  # no move: nothing more


def test_a_broker_that_refuses_the_creation_still_lets_the_floor_move() -> None:
    from steelcore.kafka.exceptions import KafkaException

    broker = FakeBroker()
    broker.add_topic("fr.11")
    broker.write("fr.11", 0, 2)
    now = [12 * ROTATION_S + 5.0]
    janitor = make_janitor(broker, now)
    assert janitor.delete_consumed().floor == 11
    broker.committed[("fr.11", 0)] = 2
    refused = []

    def refuse(new_topics: list[Any], **_: Any) -> None:
        refused.extend(t.topic for t in new_topics)
        raise KafkaException("broker away")

    janitor.admin.create_topics = refuse  # type: ignore[method-assign]
    report = janitor.delete_consumed()
    assert (report.floor, report.created) == (12, [])  # the producers create them at the boundary
    assert sorted(refused) == ["fr.13", "fr.14", "tr.13", "tr.14"]


def test_a_bucket_still_in_its_grace_period_is_neither_probed_nor_deleted() -> None:
    broker = FakeBroker()
    broker.add_topic("fr.4")
    now = [5 * ROTATION_S + GRACE_S - 0.5]  # bucket 4 ended 1.5 s ago: a late delivery may still land
    janitor = make_janitor(broker, now)
    report = janitor.delete_consumed()
    assert (report.floor, report.proven) == (4, [])
    assert janitor.probe.consumer.assignments == 0
    now[0] += 1.0
    assert janitor.delete_consumed().proven == [4]  # empty, closed: consumed


def test_an_undecided_probe_keeps_the_bucket_and_the_floor() -> None:
    broker = FakeBroker()
    broker.add_topic("fr.3")
    broker.write("fr.3", 0, 2)
    broker.committed[("fr.3", 0)] = 2
    now = [9 * ROTATION_S]
    janitor = make_janitor(broker, now, answers=False)
    for _ in range(3):
        report = janitor.delete_consumed()
        now[0] += janitor.retire_after_s
        assert (report.floor, report.undecided, report.deleted) == (3, [3], [])


def test_truth_buckets_are_kept_for_two_buckets_then_deleted() -> None:
    broker = FakeBroker()
    for b in range(5, 11):
        broker.add_topic(f"tr.{b}")
    now = [10 * ROTATION_S + 1.0]  # current bucket 10
    report = make_janitor(broker, now).delete_consumed()
    assert report.deleted == ["tr.5", "tr.6", "tr.7"]
    assert sorted(broker.topics) == ["tr.10", "tr.8", "tr.9"]
