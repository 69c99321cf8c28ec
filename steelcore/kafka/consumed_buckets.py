"""Deleting rotated topic buckets once the worker group is done with them (steelcore.kafka.topic_rotation).

Every worker runs a janitor (workers.topic_janitor: a thread calling
:meth:`ConsumedBucketDeleter.delete_consumed` every ``topic_janitor_interval_s``). There is no
leader to elect: each check reads only shared state (topic list, the group's committed offsets, the
clock), so all workers reach the same verdicts, and deleting a topic twice is harmless. A check:

1. proves which *closed* frames buckets the group has fully consumed (:class:`DrainProbe`);
2. moves the worker's *floor* to the oldest bucket not yet proven consumed (the worker assigns
   itself only buckets >= floor, so drained buckets drop out of its assignment at once);
3. deletes frames buckets that have been below the floor for ``retire_after_s`` (three check
   intervals: by then every live worker has run its own check and dropped them), and truth buckets
   older than TRUTH_KEEP_BUCKETS.

When the floor moves, the check first creates the next PREPARE_AHEAD_BUCKETS buckets (frames and
truth), so that every worker has long listed a bucket when its first frame arrives, and the
producers, who create their current and next bucket at each boundary (producers.bucket_router),
find both there. (Made in session 8, when the workers still subscribed to the buckets and every new
topic was a rebalance of the group: created here it joined in the floor move's rebalance. Since
session 9 neither costs a rebalance: workers subscribe to the membership topic only.) Without a
floor move (no worker, or a backlog) the producers still create each bucket one period ahead.

Why the floor and the wait: a consumer fetching from a topic at the moment it is deleted on the
embedded broker crashes librdkafka (a segmentation fault in its metadata cache, seen with
librdkafka 2.16 against Tansu 0.6), so no consumer may still be assigned a bucket when it goes.

Why a probe: Tansu reports the high watermark as the last batch's base offset + 1, so "committed
offset == high watermark" does not prove a partition consumed. The probe assigns a consumer (no
group membership) at committed - 1 and requires that record, and nothing after it, to come back;
with no commit, the partition must be empty. On a real Kafka the watermark is exact and used as is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from steelcore.kafka.clients import new_admin, new_consumer
from steelcore.kafka.topic_admin import delete_topics, ensure_topics
from steelcore.kafka.topic_rotation import (
    TRUTH_KEEP_BUCKETS,
    bucket_number,
    bucket_of,
    bucket_topic,
    is_closed,
)
from steelcore.service_urls import is_embedded
from steelcore.settings import Settings

log = logging.getLogger(__name__)

Partition = tuple[str, int]
# A bucket leaves the worker's subscription within one check interval of being proven consumed;
# deleting after three leaves two intervals for a slow check or a rebalance.
RETIRE_AFTER_INTERVALS = 3
# Buckets after the current one created at a floor move: the producers' next boundary creates the
# bucket it starts and the one after, so two here leave it nothing to create.
PREPARE_AHEAD_BUCKETS = 2


class DrainProbe:
    """Proves that a consumer group has consumed everything in given partitions.

    ``consumer`` is a confluent_kafka.Consumer configured with the group's id that never subscribes:
    it reads the group's committed offsets and the watermarks, and is assigned for the probe.
    """

    def __init__(
        self, consumer: Any, *, exact_watermarks: bool, timeout_s: float = 5.0, settle_s: float = 0.5
    ) -> None:
        self.consumer = consumer
        self.exact_watermarks = exact_watermarks
        self.timeout_s, self.settle_s = timeout_s, settle_s

    def drained(self, partitions: Sequence[Partition]) -> dict[Partition, bool | None]:
        """Per partition: True = consumed, False = records left, None = could not tell this time."""
        if not partitions:
            return {}
        wanted = [TopicPartition(t, p) for t, p in partitions]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in self.consumer.committed(wanted, timeout=self.timeout_s)
        }
        verdict: dict[Partition, bool | None] = {}
        to_probe: dict[Partition, int] = {}
        for key in partitions:
            try:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(*key), timeout=self.timeout_s, cached=False
                )
            except KafkaException as exc:
                log.info("no watermarks for %s[%d] (%s); deciding next time", *key, exc)
                verdict[key] = None
                continue
            offset = committed.get(key, -1)
            if offset < 0:
                verdict[key] = high <= low  # nothing committed: consumed only if nothing was kept
            elif high > offset:
                verdict[key] = False  # even an underestimated watermark is past the commit
            elif self.exact_watermarks or offset == 0:
                verdict[key] = True
            else:
                to_probe[key] = offset
        verdict.update(self._probe(to_probe))
        return verdict

    def _probe(self, committed: dict[Partition, int]) -> dict[Partition, bool | None]:
        if not committed:
            return {}
        self.consumer.assign([TopicPartition(t, p, offset - 1) for (t, p), offset in committed.items()])
        seen: dict[Partition, str] = {}
        deadline = time.monotonic() + self.timeout_s
        settled_at: float | None = None
        try:
            while time.monotonic() < deadline:
                for message in self.consumer.consume(num_messages=100, timeout=0.05):
                    key = (message.topic(), message.partition())
                    if message.error() is not None or key not in committed:
                        continue
                    if message.offset() >= committed[key]:
                        seen[key] = "beyond"
                    elif message.offset() == committed[key] - 1:
                        seen.setdefault(key, "last")
                if len(seen) == len(committed):
                    # Every partition answered; keep fetching a moment for records after the last.
                    settled_at = settled_at or time.monotonic() + self.settle_s
                    if time.monotonic() >= settled_at:
                        break
        finally:
            self.consumer.unassign()
        return {key: (seen[key] == "last" if key in seen else None) for key in committed}

    def close(self) -> None:
        self.consumer.close()


@dataclass
class DeletionReport:
    floor: int
    current: int
    proven: list[int] = field(default_factory=list)  # buckets proven consumed by this check
    undecided: list[int] = field(default_factory=list)  # closed buckets the probe could not settle
    deleted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # buckets created ahead, at a floor move


class ConsumedBucketDeleter:
    """One worker's view of the frames buckets: the subscription floor, and which buckets to delete.

    delete_consumed() both raises the floor (the worker re-subscribes from it) and deletes what has
    been below it long enough; see the module docstring for why the two go together."""

    def __init__(
        self,
        settings: Settings,
        rotation_s: float,
        *,
        admin: Any,
        probe: DrainProbe,
        clock: Callable[[], float] = time.time,
        retire_after_s: float | None = None,
    ) -> None:
        if not rotation_s > 0:
            raise ValueError(f"ConsumedBucketDeleter needs rotation_s > 0, got {rotation_s}")
        self.settings, self.rotation_s = settings, rotation_s
        self.admin, self.probe, self._clock = admin, probe, clock
        self.retire_after_s = (
            retire_after_s
            if retire_after_s is not None
            else RETIRE_AFTER_INTERVALS * settings.topic_janitor_interval_s
        )
        self.floor = bucket_of(clock(), rotation_s)
        self._floor_known = False
        self._proven: set[int] = set()
        self._below_floor_since: dict[int, float] = {}

    def delete_consumed(self) -> DeletionReport:
        s = self.settings
        now = self._clock()
        current = bucket_of(now, self.rotation_s)
        topics = self.admin.list_topics(timeout=10).topics
        frames = {
            b: md
            for name, md in topics.items()
            if (b := bucket_number(s.frames_topic, name)) is not None and md.error is None
        }
        truth = [b for name in topics if (b := bucket_number(s.truth_topic, name)) is not None]
        report = DeletionReport(floor=self.floor, current=current)

        closed = [b for b in sorted(frames) if b not in self._proven and self._closed(b, now)]
        verdict = self.probe.drained(
            [(bucket_topic(s.frames_topic, b), p) for b in closed for p in frames[b].partitions]
        )
        for b in closed:
            answers = [verdict.get((bucket_topic(s.frames_topic, b), p)) for p in frames[b].partitions]
            if all(a is True for a in answers):
                self._proven.add(b)
                report.proven.append(b)
            elif any(a is None for a in answers) and not any(a is False for a in answers):
                report.undecided.append(b)

        pending = [b for b in frames if b not in self._proven]
        proven_here = [b for b in frames if b in self._proven]
        # Only a proof moves the floor; it never passes an open bucket, since only closed buckets
        # are proven.
        floor = min(pending) if pending else max(proven_here) + 1 if proven_here else self.floor
        if self._floor_known:
            floor = max(floor, self.floor)  # proofs are never withdrawn: the floor only rises
            if floor > self.floor:  # before the floor is published: the worker follows it
                report.created = self._create_ahead(current)
        self.floor, self._floor_known = floor, True
        report.floor = floor
        for b in frames:
            if b < floor:
                self._below_floor_since.setdefault(b, now)

        doomed = [
            bucket_topic(s.frames_topic, b)
            for b in sorted(frames)
            if b < floor and now - self._below_floor_since[b] >= self.retire_after_s
        ]
        doomed += [
            bucket_topic(s.truth_topic, b)
            for b in sorted(truth)
            if b <= current - TRUTH_KEEP_BUCKETS - 1 and self._closed(b, now)
        ]
        report.deleted = self._delete(doomed)
        # Forget buckets that no longer exist (deleted here or by another worker's janitor).
        self._proven &= set(frames)
        self._below_floor_since = {b: t for b, t in self._below_floor_since.items() if b in frames}
        return report

    def _create_ahead(self, current: int) -> list[str]:
        s = self.settings
        names = [
            bucket_topic(topic, b)
            for b in range(current + 1, current + 1 + PREPARE_AHEAD_BUCKETS)
            for topic in (s.frames_topic, s.truth_topic)
        ]
        try:
            created = ensure_topics(self.admin, names, s.frames_partitions)
        except (KafkaException, TimeoutError) as exc:  # the producers create them at the boundary
            log.warning("could not create the next buckets %s: %s", names, exc)
            return []
        if created:
            log.info("created the next buckets %s with the floor move", created)
        return created

    def _closed(self, bucket: int, now: float) -> bool:
        return is_closed(bucket, self.rotation_s, self.settings.topic_close_grace_s, now)

    def _delete(self, names: list[str]) -> list[str]:
        deleted = delete_topics(self.admin, names)
        if deleted:
            log.info("deleted consumed bucket topics %s", deleted)
        return deleted

    def close(self) -> None:
        self.probe.close()


def deleter_from_settings(
    settings: Settings, group_id: str, rotation_s: float, client_id: str
) -> ConsumedBucketDeleter:
    """A deleter with its own admin client and probe consumer (in the worker's group, never joining it)."""
    admin = new_admin(settings)
    consumer = new_consumer(group_id, settings, {"client.id": f"steel-janitor-{client_id}"})
    probe = DrainProbe(consumer, exact_watermarks=not is_embedded("kafka", settings))
    return ConsumedBucketDeleter(settings, rotation_s, admin=admin, probe=probe)
