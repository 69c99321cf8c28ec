"""The worker's consumer session (mixed into workers.worker_loop.InferenceWorker, whose
attributes it uses): Kafka clients, subscription with or without topic rotation, rebalance
callbacks, the embedded broker's restarts, and pausing while an outage holds a batch.

Topic rotation (steelcore.kafka.topic_rotation, on by default for the embedded broker): the worker
subscribes with a pattern to the frames buckets from a floor upwards; its janitor thread
(workers.topic_janitor) raises the floor past buckets the group has consumed and deletes them
once every worker has had time to drop them. The worker re-subscribes between batches when the
floor moves.

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

from steelcore.kafka.clients import OFFSET_BEGINNING, TopicPartition, new_admin, new_consumer
from steelcore.kafka.dead_letter import dead_letter_producer
from steelcore.kafka.exceptions import KafkaException, is_partition_eof
from steelcore.kafka.topic_admin import ensure_topics
from steelcore.kafka.topic_rotation import SUBSCRIPTION_REFRESH_MS, subscription_pattern

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


class ConsumerSession:
    """Subscription, rotation floor, rebalance callbacks, broker-restart seeking, pause/resume."""

    settings: Any
    config: Any
    metrics: Any
    probes: Any
    consumer: Any
    dead_letters: Any
    janitor: Any

    def _subscribe(self) -> None:
        """Subscribe to the frames topic, or with rotation to its buckets from the janitor's floor up."""
        assert self.consumer is not None
        s = self.settings
        if self.rotation_s > 0 and self.janitor is not None:
            self._floor = self.janitor.floor
            topics = [subscription_pattern(s.frames_topic, self._floor)]
            what = f"buckets of {s.frames_topic} from {self._floor} ({self.rotation_s:g} s each)"
        else:
            topics, what = [s.frames_topic], s.frames_topic
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info("worker %s consuming %s in group %s", self.worker_id, what, self.group_id)

    def _setup_kafka(self) -> None:
        s = self.settings
        # With rotation the producers create the buckets; the dead-letter topic never rotates.
        topics = [s.dead_letter_topic] if self.rotation_s > 0 else [s.frames_topic, s.dead_letter_topic]
        ensure_topics(new_admin(s), topics, s.frames_partitions)
        if self.dead_letters is None:
            self.dead_letters = dead_letter_producer(s, self.worker_id, self.config.dead_letter_timeout_s)
        if self.consumer is None:
            overrides: dict[str, Any] = {"client.id": f"steel-worker-{self.worker_id}"}
            if self.rotation_s > 0:
                # A pattern subscription sees new buckets at each metadata refresh.
                overrides["topic.metadata.refresh.interval.ms"] = SUBSCRIPTION_REFRESH_MS
            self.consumer = new_consumer(self.group_id, s, overrides)

    # --- rebalance callbacks (run inside consume) -----------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        if time.monotonic() < self._rewind_until:
            partitions = [
                TopicPartition(
                    tp.topic,
                    tp.partition,
                    self._committed_in_log.get((tp.topic, tp.partition), OFFSET_BEGINNING),
                )
                for tp in partitions
            ]
        consumer.assign(partitions)
        self._assigned = True
        # A new assignment starts from the offsets committed in the broker's current log (or, just
        # after a restart was noticed, from its beginning).
        self._unreset -= {(tp.topic, tp.partition) for tp in partitions}
        if self._paused:
            # The eager protocol drops the pause state with the old assignment: pause the new one.
            consumer.pause(partitions)
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        self._assigned = False
        log.info("revoked %s", _describe(partitions))

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
            fetched = self.consumer.consume(num_messages=self.config.batch_size, timeout=min(remaining, 1.0))
            usable = [m for m in fetched if not self._is_error(m)]
            if usable:
                self._carry.extend((self._log_epoch, m) for m in usable)
                self.consumer.pause(self.consumer.assignment())


def _describe(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
