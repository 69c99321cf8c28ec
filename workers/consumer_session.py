"""The worker's consumer session (mixed into workers.worker_loop.InferenceWorker, whose
attributes it uses): Kafka clients, subscription with or without topic rotation, rebalance
callbacks, the embedded broker's restarts, and pausing while an outage holds a batch.

Topic rotation (steelcore.kafka.topic_rotation, on by default for the embedded broker): the worker
subscribes to the buckets' membership topic alone, and assigns itself its share of the buckets'
partitions from a floor upwards (its membership partitions say which): it lists the topics every
SUBSCRIPTION_REFRESH_MS for new buckets and drops those below the floor as soon as it rises, all
without a rebalance of the group. Its janitor thread (workers.topic_janitor) raises the floor past
buckets the group has consumed and deletes them once every worker has had time to drop them.

A restart of the embedded (memory) broker loses its log, topics and committed offsets, but the
consumer goes on fetching at its old positions, which in the new log skip whatever was written
there first, and a batch read before the restart (or at such a position) would commit its offsets
into the new log, where the group then resumes. So against the embedded broker the worker asks the
broker's cluster id (steelcore.kafka.clients.BrokerIncarnation) every BROKER_CHECK_INTERVAL_S
between batches and before every commit; on a new one it seeks every assigned partition to the
beginning of the new log and commits no offsets of a batch consumed before it noticed (that batch
is still stored: the write is idempotent, and its frames may exist nowhere else any more).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from steelcore.kafka.clients import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition, new_admin, new_consumer
from steelcore.kafka.dead_letter import dead_letter_producer
from steelcore.kafka.exceptions import KafkaException, TopicsNotVisibleError, is_partition_eof
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.kafka.topic_rotation import (
    SUBSCRIPTION_REFRESH_MS,
    bucket_number,
    bucket_partitions,
    members_topic,
)

log = logging.getLogger("steel.worker")

# Against the embedded broker: how often the worker asks its cluster id between batches (it also
# asks before every commit), and how long it waits for the answer there.
BROKER_CHECK_INTERVAL_S = 1.0
BROKER_CHECK_TIMEOUT_S = 2.0
# After a new broker incarnation is noticed, assignments within this long start from the beginning of
# the new log for partitions this worker has not committed there yet: a commit the new broker
# refused may still have left a stale offset behind (seen once: the group resumed past frames it
# never read), and the rejoin that follows a restart comes within seconds.
BROKER_REWIND_S = 60.0
# How long the loop waits for the topic list (with rotation) before leaving it for the next try.
TOPIC_LIST_TIMEOUT_S = 1.0


class ConsumerSession:
    """Subscription, the buckets' partitions, rebalance callbacks, broker-restart seeking, pause/resume."""

    settings: Any
    config: Any
    metrics: Any
    probes: Any
    consumer: Any
    dead_letters: Any
    janitor: Any

    def _subscribe(self) -> None:
        """Subscribe to the frames topic, or with rotation to its buckets' membership topic."""
        assert self.consumer is not None
        s = self.settings
        if self._rotating():
            self._floor = self.janitor.floor
            topics = [members_topic(s.frames_topic)]
            what = (
                f"buckets of {s.frames_topic} from {self._floor} ({self.rotation_s:g} s each), "
                f"shared out through {topics[0]}"
            )
        else:
            topics, what = [s.frames_topic], s.frames_topic
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info("worker %s consuming %s in group %s", self.worker_id, what, self.group_id)

    def _rotating(self) -> bool:
        return self.rotation_s > 0 and self.janitor is not None

    def _setup_kafka(self) -> None:
        s = self.settings
        # With rotation the producers create the buckets; the dead-letter topic never rotates.
        topics = [s.dead_letter_topic]
        topics += [members_topic(s.frames_topic)] if self.rotation_s > 0 else [s.frames_topic]
        ensure_topics(new_admin(s), topics, s.frames_partitions)
        if self.dead_letters is None:
            self.dead_letters = dead_letter_producer(s, self.worker_id, self.config.dead_letter_timeout_s)
        if self.consumer is None:
            overrides: dict[str, Any] = {"client.id": f"steel-worker-{self.worker_id}"}
            if self.rotation_s > 0:
                # The membership topic, recreated after a broker restart, is seen within seconds.
                overrides["topic.metadata.refresh.interval.ms"] = SUBSCRIPTION_REFRESH_MS
            self.consumer = new_consumer(self.group_id, s, overrides)

    # --- rebalance callbacks (run inside consume) -----------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        if self._rotating():
            self._members = {tp.partition for tp in partitions}
            # Never from a stale list: a bucket deleted since would be fetched when it is gone, which
            # crashes librdkafka (steelcore.kafka.consumed_buckets). Unlisted, the next refresh assigns.
            wanted = self._bucket_share() if self._list_topics() else []
        else:
            wanted = [(tp.topic, tp.partition) for tp in partitions]
        self._assign(wanted, kept=set())
        self._assigned = True

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        self._assigned = False
        self._members = set()
        log.info("revoked %s", _describe(consumer.assignment() if self._rotating() else partitions))
        # The whole assignment goes: with rotation it is the buckets' partitions, not ``partitions``.
        consumer.unassign()

    # --- the buckets' partitions (with rotation) ------------------------------------------------
    def _follow_buckets(self) -> None:
        """Between batches, and while an outage holds one: drop the buckets below a raised floor at
        once, and take up new buckets every SUBSCRIPTION_REFRESH_MS. No rebalance either way, and
        nothing in hand is dropped: the floor never passes a bucket holding records the group has
        not committed, so every message in hand is of a bucket at or above it. A held worker must
        drop them too: the janitors delete a bucket three checks after the floor passes it, and a
        consumer still assigned a deleted topic crashes, paused or not."""
        if not self._rotating():
            return
        assert self.consumer is not None
        if self.janitor.floor != self._floor:
            self._floor = self.janitor.floor
            # Only removal: no topic list needed, and none that is stale used to add one.
            current = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
            keep = [
                k for k in current if (bucket_number(self.settings.frames_topic, k[0]) or 0) >= self._floor
            ]
            if len(keep) < len(current):
                self._assign(keep, kept=set(current))
        if time.monotonic() < self._next_topic_list or not self._list_topics() or not self._members:
            return  # not yet, the broker did not answer, or revoked (the next assignment takes them up)
        current_set = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        wanted = self._bucket_share()
        if set(wanted) != current_set:
            self._assign(wanted, kept=current_set)

    def _list_topics(self) -> bool:
        """Read the topics and their partition counts; recreate the membership topic where a broker
        restart lost it. False (kept for the next try) when the broker does not answer."""
        assert self.consumer is not None
        self._next_topic_list = time.monotonic() + SUBSCRIPTION_REFRESH_MS / 1000
        try:
            listed = self.consumer.list_topics(timeout=TOPIC_LIST_TIMEOUT_S).topics
        except KafkaException as exc:
            log.debug("listing topics: %s", exc)
            return False
        self._topic_partitions = {
            name: len(md.partitions) for name, md in listed.items() if md.error is None and md.partitions
        }
        members = members_topic(self.settings.frames_topic)
        if members not in self._topic_partitions:
            try:
                ensure_topics(
                    new_admin(self.settings), [members], self.settings.frames_partitions, timeout_s=5.0
                )
            except (KafkaException, TopicsNotVisibleError) as exc:
                log.info("recreating %s failed (%s); trying again", members, exc)
        return True

    def _bucket_share(self) -> list[tuple[str, int]]:
        """This worker's partitions of the buckets from the floor up, by its membership partitions."""
        s = self.settings
        count = self._topic_partitions.get(members_topic(s.frames_topic), s.frames_partitions)
        assert self._floor is not None
        return bucket_partitions(s.frames_topic, self._topic_partitions, self._floor, self._members, count)

    def _assign(self, wanted: list[tuple[str, int]], kept: set[tuple[str, int]]) -> None:
        """Assign ``wanted``: the ``kept`` partitions go on from the position reached; the others,
        and kept ones that delivered nothing yet, start from the offsets committed in the broker's
        current log (just after a restart was noticed, from the new log's beginning unless this
        worker committed there)."""
        assert self.consumer is not None
        positions: dict[tuple[str, int], int] = {}
        if kept:
            still = [TopicPartition(t, p) for t, p in wanted if (t, p) in kept]
            positions = {
                (tp.topic, tp.partition): tp.offset for tp in self.consumer.position(still) if tp.offset >= 0
            }
        rewinding = time.monotonic() < self._rewind_until
        assignment = []
        for key in wanted:
            if key in self._unreset:
                offset = OFFSET_BEGINNING  # still at an old log's position
            elif key in positions:
                offset = positions[key]
            elif rewinding:
                offset = self._committed_in_log.get(key, OFFSET_BEGINNING)
            else:
                offset = OFFSET_INVALID  # the group's committed offset
            assignment.append(TopicPartition(key[0], key[1], offset))
        self.consumer.assign(assignment)
        self._unreset -= set(wanted)
        if self._paused:
            # A new assignment is not paused (eager protocol, or assign()): pause it again.
            self.consumer.pause(assignment)
        added = [tp for tp in assignment if (tp.topic, tp.partition) not in kept]
        dropped = sorted(kept - set(wanted))
        log.info(
            "assigned %s%s",
            _describe(added),
            f"; dropped {', '.join(f'{t}[{p}]' for t, p in dropped)}" if dropped else "",
        )

    def _check_broker(self, *, quiet: bool) -> None:
        """Ask the embedded broker its cluster id; on a new incarnation, read every assigned
        partition again from the start of the new log. ``quiet``: a broker that does not answer is
        left for the next check; otherwise its KafkaException propagates (an outage of the step)."""
        assert self._incarnation is not None and self.consumer is not None
        self._next_broker_check = time.monotonic() + BROKER_CHECK_INTERVAL_S
        try:
            changed = self._incarnation.changed(self.consumer)
        except KafkaException as exc:
            if not quiet:
                raise
            log.debug("broker check: %s", exc)
            return
        if changed:
            self._log_epoch += 1
            self.metrics.broker_restarts.inc()
            self._rewind_until = time.monotonic() + BROKER_REWIND_S
            self._committed_in_log = {}
            self._unreset = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
            self._next_topic_list = 0.0  # with rotation: the buckets of the new log, at once
            log.error(
                "the Kafka broker restarted with an empty log: reading %s again from the beginning of "
                "the new log; offsets of messages read before now are not committed",
                ", ".join(f"{t}[{p}]" for t, p in sorted(self._unreset)) or "no assigned partition",
            )
        self._seek_unreset()

    def _seek_unreset(self) -> None:
        """Seek the partitions still at old-log positions to the beginning; a seek the consumer
        refuses now is tried again before the next batch (their offsets are not committed meanwhile)."""
        if not self._unreset:
            return
        assert self.consumer is not None
        self._unreset &= {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for topic, partition in sorted(self._unreset):
            try:
                self.consumer.seek(TopicPartition(topic, partition, OFFSET_BEGINNING))
            except KafkaException as exc:
                log.info("seeking %s[%d] to the beginning failed (%s); trying again", topic, partition, exc)
                continue
            self._unreset.discard((topic, partition))

    def _is_error(self, message: Any) -> bool:
        err = message.error()
        if err is None:
            return False
        if not is_partition_eof(err):
            log.warning("consumer error on %s[%s]: %s", message.topic(), message.partition(), err)
        return True

    def _pause(self) -> None:
        assert self.consumer is not None
        self.consumer.pause(self.consumer.assignment())
        self._paused = True
        self.metrics.paused.set(1)

    def _resume(self) -> None:
        assert self.consumer is not None
        self.consumer.resume(self.consumer.assignment())
        self._paused = False
        self.metrics.paused.set(0)
        log.info("services back; consumption resumed")

    def _poll_while_held(self, seconds: float) -> None:
        """Keep calling consume() for ``seconds`` so heartbeats, rebalances and max.poll.interval.ms
        are served. Pausing stops fetching, but a partition assigned in between may deliver before
        it is paused again: such messages are kept and handled right after the batch in hand."""
        assert self.consumer is not None
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.probes.beat()  # held through an outage, the loop still polls: alive, not stuck
            self._follow_buckets()
            fetched = self.consumer.consume(num_messages=self.config.batch_size, timeout=min(remaining, 1.0))
            usable = [m for m in fetched if not self._is_error(m)]
            if usable:
                self._carry.extend((self._log_epoch, m) for m in usable)
                self.consumer.pause(self.consumer.assignment())


def _describe(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
