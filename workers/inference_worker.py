"""The inference worker: Kafka frames -> Triton ensemble -> Postgres (defects) + Redis (alarms).

Life: ``setup`` (clients, schema migration, subscription), a loop of batches until
``stop_event`` is set (SIGTERM/SIGINT in `steel work`), ``teardown`` in ``finally`` (the consumer
leaves the group). Several workers in one consumer group share the partitions.

Per batch, in this order, each step done once even when a later one is retried:
  1. decode and validate every message; an unusable one becomes a *reject*;
  2. one Triton request for the valid frames (the client splits it by the model's max batch);
  3. rejects go to the dead-letter topic with the reason and source coordinates, delivery awaited;
  4. one Postgres transaction: frames, defects and alarms, idempotent on frame_id. If the database
     refuses a row for its content (a value out of range, a constraint), which no retry can fix,
     the frames are written one by one instead: the refused ones are dead-lettered with the
     database's reason and the rest of the batch is stored;
  5. alarms for every frame meeting the rule are published to the Redis stream (also for frames
     the database already had: a worker that died between 4 and 5 must not lose them; alarm ids
     are stable, so the actuator recognises a repeat), then marked published in the database;
  6. offsets (last + 1 per partition) committed synchronously.
Nothing is committed before 3-5 succeeded, so a crash anywhere redelivers the batch and the
idempotent write absorbs it (Kafka transactions are not relied on: the embedded broker's are not
exactly-once).

Model versions (issue 16): each frame is stored with the version Triton's answer says judged it
(MODEL_VERSION) and that version's bundle (workers.model_roles, which polls the registry every
settings.model_roles_poll_s and keeps its last roles on a database error), so labels stay exact while
`steel models promote` switches the ensemble mid-batch. While a shadow version runs, the shadow's
share of each committed batch is handed to workers.shadow_runner, which never makes the batch wait.

Whatever bytes arrive, a message ends stored or dead-lettered with a reason, and its offset is
committed: validation never raises (workers.frame_batch.validate_message), a refused row is
isolated (step 4), and a dead letter refused as too large is sent again smaller
(workers.worker_parts.DeadLetterProducer). A poison message must never crash the worker, or each
worker assigned its partition in turn would crash on it.

Batch size and load (workers.batch_policy): the worker waits up to batch_wait_s for one frame, then
takes the frames already waiting, as many as meet settings.latency_target_s at the measured seconds
per frame (a short backlog: small batches), or up to batch_size once the oldest frame is past half the
target (a long backlog: throughput). When the oldest frame of its batches stays past the target for
settings.overload_hold_s without the wait shrinking, outside outages, the worker says so: an error
log line (repeated every log_every_s), steel_worker_overloaded = 1, shown on the health page.

Outages (Triton, Postgres, Redis or Kafka unreachable): the batch stays in hand, the assignment is
paused, and the failed step is retried with capped exponential backoff while the consumer keeps
being served, so the group membership survives; consumption resumes once the batch is through.

Topic rotation (steelcore.topic_rotation, on by default for the embedded broker): the worker
subscribes with a pattern to the frames buckets from a floor upwards; its janitor thread
(workers.topic_janitor) raises the floor past buckets the group has consumed and deletes them
once every worker has had time to drop them. The worker re-subscribes between batches when the
floor moves.

A restart of the embedded (memory) broker loses its log, topics and committed offsets, but the
consumer goes on fetching at its old positions, which in the new log skip whatever was written
there first, and a batch read before the restart (or at such a position) would commit its offsets
into the new log, where the group then resumes. So against the embedded broker the worker asks the
broker's cluster id (steelcore.kafka_clients.BrokerIncarnation) every BROKER_CHECK_INTERVAL_S
between batches and before every commit; on a new one it seeks every assigned partition to the
beginning of the new log and commits no offsets of a batch consumed before it noticed (that batch
is still stored: the write is idempotent, and its frames may exist nowhere else any more).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from steelcore.kafka_clients import BrokerIncarnation
from steelcore.model_registry import shadow_pick
from steelcore.settings import Settings, get_settings
from steelcore.topic_rotation import SUBSCRIPTION_REFRESH_MS, rotation_seconds, subscription_pattern
from workers.alarm_relay import AlarmRelay, AlarmRelayThread
from workers.alarm_rules import AlarmRule
from workers.alarm_stream import AlarmStream
from workers.batch_policy import BatchPolicy, OverloadDetector
from workers.defect_store import StoreResult
from workers.drift_watch import DriftWatch, client_of, observe_safely
from workers.frame_batch import Batch, Rejected, ValidFrame, build_records, next_offsets, validate_message
from workers.model_roles import RoleWatch
from workers.shadow_runner import ShadowRunner
from workers.topic_janitor import BucketJanitor, JanitorThread, janitor_from_settings
from workers.triton_client import EnsembleResult, TritonClientError
from workers.worker_metrics import WorkerMetrics
from workers.worker_parts import (
    AlarmPublisher,
    Backoff,
    BatchAbandonedError,
    DeadLetterError,
    DeadLetterProducer,
    DeadLetterSink,
    Inference,
    Outage,
    PostgresStore,
    Store,
    is_db_outage,
    is_kafka_outage,
    is_refused_row,
    merge_store_results,
)
from workers.worker_probes import WorkerProbes

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
# Longest one teardown step may take before it is left behind (see _close_within).
TEARDOWN_STEP_S = 10.0


@dataclass(frozen=True)
class WorkerConfig:
    """Tuning of one worker; the defaults suit the embedded stack on a small machine."""

    # The largest batch (one Triton request and one transaction); workers.batch_policy picks the
    # size of each batch up to it, from the backlog and settings.latency_target_s.
    batch_size: int = 8
    batch_wait_s: float = 0.2  # how long consume() waits for a first frame before the loop goes round
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    shutdown_grace_s: float = 30.0  # after a stop request, how long an outage may still delay exit
    dead_letter_timeout_s: float = 10.0
    startup_timeout_s: float = 60.0  # wait for the Triton model to be ready at start
    metrics_port: int = 0  # 0 = no /metrics endpoint; `steel work` takes settings.worker_metrics_port
    log_every_s: float = 30.0
    # Label stored with each frame when the answer names no MODEL_VERSION (a repository exported
    # before versions); default: the Triton model name. Answers that name one store theirs.
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_wait_s < 0 or self.shutdown_grace_s < 0:
            raise ValueError("batch_wait_s and shutdown_grace_s must be >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(
                "need 0 < backoff_initial_s <= backoff_max_s, "
                f"got {self.backoff_initial_s} and {self.backoff_max_s}"
            )


class InferenceWorker:
    """One worker of the consumer group. Parts not passed in are built from settings in setup()."""

    def __init__(
        self,
        settings: Settings | None = None,
        config: WorkerConfig | None = None,
        *,
        group_id: str | None = None,
        consumer: Any | None = None,
        dead_letters: DeadLetterSink | None = None,
        inference: Inference | None = None,
        store: Store | None = None,
        alarm_publisher: AlarmPublisher | None = None,
        metrics: WorkerMetrics | None = None,
        janitor: BucketJanitor | None = None,
        alarm_relay: AlarmRelay | None = None,
        drift: DriftWatch | None = None,
        roles: RoleWatch | None = None,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.config = config or WorkerConfig()
        self.group_id = group_id or self.settings.consumer_group
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{id(self) & 0xFFFF:04x}"
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.inference = inference
        self.store = store
        self.alarm_publisher = alarm_publisher
        self.metrics = metrics or WorkerMetrics()
        self.janitor = janitor
        self.alarm_relay = alarm_relay
        self.drift = drift
        # Model versions (issue 16): which bundle each version is, and the shadow run if one is set.
        self.roles = roles
        self.shadow = shadow
        self._relay_thread: AlarmRelayThread | None = None
        self.rotation_s = rotation_seconds(self.settings)
        self._janitor_thread: JanitorThread | None = None
        self._floor: int | None = None  # bucket subscription floor, with topic rotation
        self.rule = AlarmRule.from_settings(self.settings)
        self.model_version = self.config.model_version or self.settings.triton_model
        self.stop_event = threading.Event()
        self._backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        self._paused = False
        # Fetched while paused, with the log epoch they were read in; handled before consuming more.
        self._carry: list[tuple[int, Any]] = []
        self._rebalances = 0
        self._stop_deadline: float | None = None
        self._redis: Any = None
        self._last_log = time.monotonic()
        self._embedded_kafka = True
        # The embedded broker's restarts (see the module docstring): the incarnation last seen, a
        # counter of those seen, and the assigned partitions still to seek to the new log's start.
        self._incarnation: BrokerIncarnation | None = None
        self._log_epoch = 0
        self._next_broker_check = 0.0
        self._unreset: set[tuple[str, int]] = set()
        self._rewind_until = 0.0
        # What this worker committed in the broker's current log (offset per partition): just after a
        # restart the broker's own committed offset can be one it refused from the old log.
        self._committed_in_log: dict[tuple[str, int], int] = {}
        # Batch size by backlog and latency target, and overload detection (workers.batch_policy).
        self.batching = BatchPolicy(self.settings.latency_target_s, max_batch=self.config.batch_size)
        self.overload = OverloadDetector(self.settings.latency_target_s, self.settings.overload_hold_s)
        self._held = False  # the batch in hand met an outage
        self.teardown_hung = False  # a close step was left running (steel work then exits at once)
        self._served: list[tuple[float, int]] = []  # (monotonic time, frames) of recent batches
        self.metrics.latency_target.set(self.settings.latency_target_s)
        # /livez and /readyz (workers.worker_probes): the loop beats the heartbeat; readiness asks
        # the parts below. _assigned is written by the rebalance callbacks only (loop thread).
        self._assigned = False
        self._schema_head: str | None = None
        self.probes = WorkerProbes(
            self.settings.worker_liveness_timeout_s,
            [
                ("worker", self._check_running),
                ("triton", self._check_triton),
                ("database", self._check_database),
                ("kafka", self._check_assignment),
            ],
        )

    # --- life -----------------------------------------------------------------------------------
    def run(self) -> None:
        """setup, batches until stop_event, teardown (also after an error)."""
        try:
            self.setup()
            while not self.stop_event.is_set():
                self.run_once()
        finally:
            self.teardown()

    def setup(self) -> None:
        from steelcore import service_urls

        s = self.settings
        self.probes.beat()  # the startup waits below are bounded (startup_timeout_s, connect timeouts)
        self.metrics.serve(self.config.metrics_port, addr=s.worker_metrics_address, probes=self.probes)
        self._embedded_kafka = service_urls.is_embedded("kafka", s)
        if self.inference is None:
            from workers.triton_client import TritonEnsembleClient

            client = TritonEnsembleClient(
                service_urls.triton_url(s), s.triton_protocol, s.triton_model, s.triton_timeout_s
            )
            self.inference = client
            client.wait_ready(self.config.startup_timeout_s)
        if self.store is None:
            from workers.db_migrate import create_db_engine, upgrade

            url = service_urls.postgres_url(s)
            upgrade(url)
            self.store = PostgresStore(create_db_engine(url), s)
        if self.alarm_publisher is None:
            from workers.actuator import alarm_stream_from_settings

            stream = alarm_stream_from_settings(s)
            stream.client.ping()
            self._redis = stream.client
            self.alarm_publisher = stream
        if self.roles is None and isinstance(self.store, PostgresStore):
            self.roles = RoleWatch.from_engine(self.store.engine, s)
        if self.roles is not None:
            self.roles.refresh()
        if self.shadow is None and self.roles is not None and isinstance(self.store, PostgresStore):
            self.shadow = self._shadow_runner(self.store.engine)
        if self.shadow is not None:
            self.shadow.start()
        if self.drift is None and (client := client_of(self.alarm_publisher)) is not None:
            self.drift = DriftWatch.from_settings(s, client, self.metrics)
        if isinstance(self.store, PostgresStore) and isinstance(self.alarm_publisher, AlarmStream):
            if self.alarm_relay is None:
                relay = AlarmRelay.from_settings(self.store.engine, self.alarm_publisher, self.metrics, s)
                self.alarm_relay = relay
        if self.alarm_relay is not None:  # the outbox's stale rows, and the stream's trimming
            self._relay_thread = AlarmRelayThread(self.alarm_relay, s.alarm_relay_interval_s)
            self._relay_thread.start()
        if self.dead_letters is None or self.consumer is None:
            self._setup_kafka()
        if self.rotation_s > 0:
            if self.janitor is None:
                self.janitor = janitor_from_settings(s, self.group_id, self.rotation_s, self.worker_id)
            self.janitor.check()  # the floor, before the first subscription
            self._janitor_thread = JanitorThread(self.janitor, s.topic_janitor_interval_s)
            self._janitor_thread.start()
        self.probes.beat()
        self._subscribe()
        if self._embedded_kafka:
            self._incarnation = BrokerIncarnation(timeout_s=BROKER_CHECK_TIMEOUT_S)
            self._check_broker(quiet=True)  # records the cluster id of the log being read

    def _shadow_runner(self, engine: Any) -> ShadowRunner | None:
        """A runner asking the cascade of the worker's own Triton; None with injected inference."""
        from workers.shadow_runner import SHADOW_MODEL, write_shadow_results
        from workers.triton_client import TritonEnsembleClient

        if not isinstance(self.inference, TritonEnsembleClient):
            return None
        s = self.settings
        # A client of its own: the shadow's requests never take the production client's slots.
        client = TritonEnsembleClient(
            self.inference.url, self.inference.protocol, SHADOW_MODEL, s.triton_timeout_s,
            max_in_flight=1, retries=1,
        )  # fmt: skip
        return ShadowRunner(
            client,
            lambda rows: write_shadow_results(engine, rows),
            self.metrics,
            s.shadow_queue_frames,
            timeout_s=3 * s.triton_timeout_s,
        )

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
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.admin import AdminClient

        from steelcore.kafka_clients import admin_config, consumer_config, ensure_topics, producer_config

        s = self.settings
        kafka_log = {"logger": logging.getLogger("librdkafka")}
        # With rotation the producers create the buckets; the dead-letter topic never rotates.
        topics = [s.dead_letter_topic] if self.rotation_s > 0 else [s.frames_topic, s.dead_letter_topic]
        ensure_topics(AdminClient(admin_config(s, kafka_log)), topics, s.frames_partitions)
        if self.dead_letters is None:
            producer = Producer(
                producer_config(s, {**kafka_log, "message.max.bytes": s.max_frame_bytes + 65536})
            )
            self.dead_letters = DeadLetterProducer(
                producer,
                s.dead_letter_topic,
                self.worker_id,
                self.config.dead_letter_timeout_s,
                s.max_frame_bytes,
            )
        if self.consumer is None:
            overrides: dict[str, Any] = {**kafka_log, "client.id": f"steel-worker-{self.worker_id}"}
            if self.rotation_s > 0:
                # A pattern subscription sees new buckets at each metadata refresh.
                overrides["topic.metadata.refresh.interval.ms"] = SUBSCRIPTION_REFRESH_MS
            self.consumer = Consumer(consumer_config(self.group_id, s, overrides))

    def teardown(self) -> None:
        """Close everything; the consumer leaves the group (no commit: offsets are committed per batch)."""
        steps: list[tuple[str, Callable[[], object] | None]] = [
            ("shadow runner", self.shadow.stop if self.shadow is not None else None),
            ("bucket janitor", self._janitor_thread.stop if self._janitor_thread is not None else None),
            ("alarm relay", self._relay_thread.stop if self._relay_thread is not None else None),
            ("janitor clients", self.janitor.close if self.janitor is not None else None),
            ("consumer", self.consumer.close if self.consumer is not None else None),
            ("dead-letter producer", self.dead_letters.close if self.dead_letters is not None else None),
            ("triton client", self.inference.close if self.inference is not None else None),
            ("database", self.store.close if self.store is not None else None),
            ("redis", self._redis.close if self._redis is not None else None),
            ("metrics", self.metrics.close),
            ("readiness checks", self.probes.close),
        ]
        for name, close in steps:
            if close is not None:
                self._close_within(name, close, TEARDOWN_STEP_S)
        log.info("worker %s stopped", self.worker_id)

    def _close_within(self, name: str, close: Callable[[], object], timeout_s: float) -> None:
        """Run one close step, but give up on it after timeout_s: librdkafka's consumer close has been
        seen to hang for good after an embedded broker restart. Offsets are committed per batch, so
        leaving a hung close loses nothing; `steel work` then exits without waiting for it."""
        errors: list[BaseException] = []

        def target() -> None:
            try:
                close()
            except Exception as exc:  # teardown goes on: one failing close must not keep the others open
                errors.append(exc)

        thread = threading.Thread(target=target, name=f"close-{name}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            self.teardown_hung = True
            log.error(
                "closing the %s did not finish in %.0f s; leaving it (offsets are already committed)",
                name,
                timeout_s,
            )
        elif errors:
            log.warning("closing %s failed: %s", name, errors[0])

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

    # --- readiness checks (workers.worker_probes; run on the metrics server's threads) ----------
    def _check_running(self) -> str | None:
        return "stopping" if self.stop_event.is_set() else None

    def _check_triton(self) -> str | None:
        inference = self.inference
        if inference is None:
            return "client not started"
        ready = getattr(inference, "ready", None)  # injected test doubles may have no health call
        if callable(ready) and not ready():
            return f"model {self.settings.triton_model!r} not ready"
        return None

    def _check_database(self) -> str | None:
        store = self.store
        if store is None:
            return "not connected"
        if not isinstance(store, PostgresStore):
            return None
        from sqlalchemy import text

        from workers.db_migrate import head_revision

        if self._schema_head is None:
            self._schema_head = head_revision()
        with store.engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if current != self._schema_head:
            return f"schema at revision {current}, this worker needs {self._schema_head}"
        return None

    def _check_assignment(self) -> str | None:
        # An empty assignment (more workers than partitions) still means a member of the group.
        return None if self._assigned else "no partition assignment yet"

    # --- one batch ------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Consume one batch and see it through; returns the number of messages handled."""
        assert self.consumer is not None
        self.probes.beat()
        if self.roles is not None:
            self.roles.poll()
        janitor = self.janitor if self.rotation_s > 0 else None
        if janitor is not None and janitor.floor != self._floor and not self._carry:
            self._subscribe()  # drained buckets leave the assignment (rebalance) before deletion
        if self._incarnation is not None and (self._unreset or time.monotonic() >= self._next_broker_check):
            self._check_broker(quiet=True)
        if self._carry:
            epoch = self._carry[0][0]  # one batch never mixes messages of two logs
            taken = list(itertools.takewhile(lambda c: c[0] == epoch, self._carry[: self.config.batch_size]))
            self._carry = self._carry[len(taken) :]
            usable = [message for _, message in taken]
        else:
            epoch = self._log_epoch
            usable = self._fetch()
        if usable:
            batch = Batch(usable, datetime.now(UTC), self._rebalances, log_epoch=epoch)
            self.metrics.batch_frames.observe(len(usable))
            started, self._held = time.monotonic(), False
            self._process(batch)
            self._judge_load(batch, time.monotonic() - started)
        self._maybe_log()
        return len(usable)

    def _fetch(self) -> list[Any]:
        """Wait up to batch_wait_s for a frame, then take the frames already waiting, as many as the
        batch policy allows for the first one's lag (workers.batch_policy)."""
        assert self.consumer is not None
        fetched = self.consumer.consume(num_messages=1, timeout=self.config.batch_wait_s)
        usable = [m for m in fetched if not self._is_error(m)]
        if not usable:
            if not fetched and self.overload.idle(time.monotonic()):
                self.metrics.overloaded.set(0)  # nothing waits: whatever the lag was, it is gone
                log.warning("load back within what this worker serves: nothing waiting")
            return usable
        limit = self.batching.choose(self.config.batch_size, _age_s(usable[0]))
        self.metrics.batch_limit.set(limit)
        if limit > 1:
            more = self.consumer.consume(num_messages=limit - 1, timeout=0)
            usable += [m for m in more if not self._is_error(m)]
        return usable

    def _judge_load(self, batch: Batch, seconds: float) -> None:
        """Teach the batch policy the batch's time, and judge the load by its oldest frame's
        camera-to-done time: loudly (error log, metric) when it stays past the latency target."""
        if not batch.valid:
            return
        if not self._held:
            self.batching.observe(len(batch.messages), seconds)
        oldest = min(f.header.captured_at for f in batch.valid)
        latency = (datetime.now(UTC) - oldest).total_seconds()
        self.metrics.frame_latency.set(latency)
        self._served.append((time.monotonic(), len(batch.valid)))
        was = self.overload.overloaded
        if self.overload.update(time.monotonic(), latency, held=self._held):
            self.metrics.overloaded.set(1)
            self.metrics.overload_episodes.inc()
            self._log_overload(latency)
        elif was and not self.overload.overloaded:
            self.metrics.overloaded.set(0)
            log.warning(
                "load back within what this worker serves: camera-to-done %.2f s (target %.2f s)",
                latency, self.settings.latency_target_s,
            )  # fmt: skip

    def _served_fps(self) -> float:
        """Frames this worker served per second over the last overload_hold_s."""
        now = time.monotonic()
        window = self.settings.overload_hold_s
        self._served = [(t, n) for t, n in self._served if now - t <= window]
        if len(self._served) < 2:
            return 0.0
        span = now - self._served[0][0]
        return sum(n for _, n in self._served[1:]) / span if span > 0 else 0.0

    def _log_overload(self, latency: float) -> None:
        log.error(
            "OVERLOADED: frames wait %.1f s from camera to done (target %.2f s) and the wait has not "
            "shrunk for %.0f s; this worker serves %.1f frames/s at batches of up to %d (%.0f ms per "
            "frame). The load is more than this machine serves: lower the camera rate, add workers "
            "or a faster Triton",
            latency, self.settings.latency_target_s, self.settings.overload_hold_s, self._served_fps(),
            self.config.batch_size, 1000 * self.batching.frame_s,
        )  # fmt: skip

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
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error on %s[%s]: %s", message.topic(), message.partition(), err)
        return True

    def _process(self, batch: Batch) -> None:
        self._decode(batch)
        self._backoff.reset()
        while True:
            try:
                self._advance(batch)
                break
            except Outage as outage:
                self._hold(batch, outage)
        if self._paused:
            self._resume()
        self._account(batch)
        self._offer_shadow(batch)

    def _decode(self, batch: Batch) -> None:
        started = time.perf_counter()
        batch.offsets = next_offsets(batch.messages)
        for message in batch.messages:
            checked = validate_message(
                message,
                self.settings.max_frame_bytes,
                max_ahead_s=self.settings.max_capture_ahead_s,
                now=batch.received_at,
            )
            if isinstance(checked, ValidFrame):
                batch.valid.append(checked)
            else:
                log.warning(
                    "dead-lettering %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(),
                    checked.reason,
                )  # fmt: skip
                batch.rejects.append(checked)
        self.metrics.observe_stage("decode", time.perf_counter() - started)

    def _advance(self, batch: Batch) -> None:
        """Run the steps not done yet; raises Outage from the first that meets an unreachable service."""
        if batch.records is None:
            if batch.valid:
                result, infer_s = self._step("infer", TritonClientError, self._infer, batch.valid)
                records, alarms, bad = build_records(
                    batch.valid, result, self.rule, received_at=batch.received_at, infer_s=infer_s,
                    model_name=self.settings.model_name, model_version=self.model_version,
                    labels=self._labels(result),
                )  # fmt: skip
                batch.rejects.extend(bad)
                refused = {id(r.message) for r in bad}
                batch.sources = [f.message for f in batch.valid if id(f.message) not in refused]
                batch.records, batch.alarms = records, alarms
            else:
                batch.records = []
        if batch.dead_letters_pending is None:
            batch.dead_letters_pending = list(batch.rejects)
        self._dead_letter(batch)
        if batch.records and batch.stored is None:
            batch.stored = self._step("store", is_db_outage, self._store, batch)
        self._dead_letter(batch)  # the frames the database refused, if any
        if batch.alarms and batch.alarm_entries is None:
            assert self.alarm_publisher is not None
            batch.alarm_entries = self._step(
                "alarm", lambda e: isinstance(e, redis.RedisError), self.alarm_publisher.publish, batch.alarms
            )
        if batch.alarm_entries and not batch.marked:
            assert self.store is not None
            published = [
                (a.frame_id, a.class_id, e) for a, e in zip(batch.alarms, batch.alarm_entries, strict=True)
            ]
            self._step("outbox", is_db_outage, self.store.mark_published, published)
            batch.marked = True
        if not batch.committed:
            self._step("commit", is_kafka_outage, self._commit, batch)
            batch.committed = True

    def _labels(self, result: EnsembleResult) -> list[tuple[str, str]] | None:
        """(model_name, model_version) per frame from the version each answer says judged it: exact
        across a switch, where one batch's frames may straddle two versions. None for an answer
        without versions (a repository exported before them): the labels of the settings then."""
        if result.versions is None:
            return None
        versions = [int(v) for v in result.versions]
        self.metrics.model_version.set(versions[-1])
        if self.roles is None:
            return [(self.settings.model_name, str(v)) for v in versions]
        return [self.roles.label(v) for v in versions]

    def _offer_shadow(self, batch: Batch) -> None:
        """Hand the shadow's share of the batch's stored frames to the shadow runner (never waits)."""
        if self.shadow is None or self.roles is None or not batch.records:
            return
        running = self.roles.shadow()
        if running is None:
            return
        version, share = running
        # A frame the shadow version already judged as production (a promotion this worker's roles
        # have not caught up with yet) would only be judged twice by the same version.
        stored = {r.frame_id for r in batch.records if r.model_version != str(version)}
        picked = [
            f for f in batch.valid if f.header.frame_id in stored and shadow_pick(f.header.frame_id, share)
        ]
        if picked:
            self.shadow.offer(picked, version)

    def _dead_letter(self, batch: Batch) -> None:
        if not batch.dead_letters_pending:
            return
        assert self.dead_letters is not None
        batch.dead_letters_pending = self._step(
            "dead_letter", is_kafka_outage, self.dead_letters.send, batch.dead_letters_pending
        )
        if batch.dead_letters_pending:
            raise Outage("dead_letter", DeadLetterError(f"{len(batch.dead_letters_pending)} not delivered"))

    def _store(self, batch: Batch) -> StoreResult:
        """Write the batch's records; when the database refuses a row for its content, write them
        one by one, and turn each refused frame into a reject (its alarms are not published)."""
        assert self.store is not None and batch.records is not None
        try:
            return self.store.write_batch(batch.records)
        except Exception as exc:
            if not is_refused_row(exc):
                raise
            log.warning(
                "database refused a row of the batch (%s); writing its frames one by one", _first_line(exc)
            )
        assert len(batch.sources) == len(batch.records)
        results: list[StoreResult] = []
        kept, rejects = [], []
        for record, message in zip(batch.records, batch.sources, strict=True):
            try:
                results.append(self.store.write_batch([record]))
            except Exception as exc:
                if not is_refused_row(exc):
                    raise  # an outage meanwhile: the whole step is retried (rows written are duplicates)
                reason = f"database refused the frame: {_first_line(exc)}"
                log.warning("dead-lettering frame %s: %s", record.frame_id, reason)
                rejects.append((record.frame_id, Rejected(message, reason)))
                continue
            kept.append(record)
        # The batch changes only now, so a retry after an outage above starts from the same state.
        refused = {frame_id for frame_id, _ in rejects}
        batch.records = kept
        batch.alarms = [a for a in batch.alarms if a.frame_id not in refused]
        batch.rejects.extend(r for _, r in rejects)
        assert batch.dead_letters_pending is not None
        batch.dead_letters_pending.extend(r for _, r in rejects)
        return merge_store_results(results)

    def _step(
        self,
        stage: str,
        transient: type[BaseException] | Callable[[BaseException], bool],
        fn: Callable[..., Any],
        *args: Any,
    ) -> Any:
        started = time.perf_counter()
        try:
            out = fn(*args)
        except Exception as exc:
            is_transient = isinstance(exc, transient) if isinstance(transient, type) else transient(exc)
            self.metrics.errors.labels(stage).inc()
            if is_transient:
                raise Outage(stage, exc) from exc
            raise
        self.metrics.observe_stage(stage, time.perf_counter() - started)
        return out

    def _infer(self, frames: Sequence[ValidFrame]) -> tuple[EnsembleResult, float]:
        assert self.inference is not None
        started = time.perf_counter()
        result = self.inference.infer_async(np.stack([f.pixels for f in frames])).result()
        return result, time.perf_counter() - started

    def _commit(self, batch: Batch) -> None:
        assert self.consumer is not None
        if self._incarnation is not None:
            # Right before the commit: a broker restarted since the batch was consumed has a new log,
            # where these offsets would make the group skip its first messages.
            self._check_broker(quiet=False)
        if batch.log_epoch != self._log_epoch:
            log.warning(
                "not committing %s: read before the broker restarted (the new log is read from its start)",
                sorted(batch.offsets),
            )
            return
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        offsets = {k: v for k, v in batch.offsets.items() if k in assigned and k not in self._unreset}
        if len(offsets) < len(batch.offsets):
            # Revoked meanwhile: the new owner starts from the last commit and redelivers these;
            # the idempotent write makes that harmless. (Or still to be sought to a new log's start.)
            log.info(
                "not committing %s: no longer assigned, or not yet read from the new log's start",
                sorted(set(batch.offsets) - set(offsets)),
            )
        if offsets and self._rebalances != batch.rebalances_at_consume:
            offsets = self._ahead_of_committed(offsets)
        if not offsets:
            return
        result = self.consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())], asynchronous=False
        )
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise KafkaException(failed[0].error)
        self._committed_in_log.update(offsets)

    def _ahead_of_committed(self, offsets: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """After a rebalance another worker may have committed further: never move a commit back."""
        assert self.consumer is not None
        current = self.consumer.committed([TopicPartition(t, p) for t, p in offsets], timeout=10)
        committed = {(tp.topic, tp.partition): tp.offset for tp in current}
        return {k: v for k, v in offsets.items() if v > committed.get(k, -1)}

    # --- outages --------------------------------------------------------------------------------
    def _hold(self, batch: Batch, outage: Outage) -> None:
        """Pause, wait (serving the consumer) and return for another try; give up only after a stop
        request has waited out the shutdown grace."""
        now = time.monotonic()
        if self.stop_event.is_set():
            if self._stop_deadline is None:
                self._stop_deadline = now + self.config.shutdown_grace_s
            if now >= self._stop_deadline:
                raise BatchAbandonedError(
                    f"stop requested and {outage.stage} still failing after "
                    f"{self.config.shutdown_grace_s:.0f} s; "
                    f"{len(batch.messages)} message(s) left uncommitted for redelivery"
                ) from outage.cause
        if not self._paused:
            self._pause()
        self._held = True
        delay = self._backoff.next()
        log.warning(
            "%s unavailable (%s); holding %d message(s), retry %d in %.1f s",
            outage.stage, outage.cause, len(batch.messages), self._backoff.attempt, delay,
        )  # fmt: skip
        self._serve(delay)

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

    def _serve(self, seconds: float) -> None:
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

    # --- bookkeeping ----------------------------------------------------------------------------
    def _account(self, batch: Batch) -> None:
        observe_safely(self.drift, batch.valid, batch.records or [])
        stored = batch.stored
        self.metrics.count("stored", len(stored.new_frame_ids) if stored else 0)
        self.metrics.count("duplicate", len(stored.duplicate_frame_ids) if stored else 0)
        self.metrics.count("dead_lettered", len(batch.rejects))
        if batch.alarm_entries:
            self.metrics.alarms.inc(len(batch.alarm_entries))
        if batch.valid:
            newest = max(f.header.captured_at for f in batch.valid)
            self.metrics.event_lag.set((datetime.now(UTC) - newest).total_seconds())
        if not self._embedded_kafka:
            self._export_offset_lag()

    def _export_offset_lag(self) -> None:
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        for tp in self.consumer.position(assignment) if assignment else []:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if tp.offset >= 0 and high >= 0:
                self.metrics.offset_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    def _maybe_log(self) -> None:
        if time.monotonic() - self._last_log < self.config.log_every_s:
            return
        self._last_log = time.monotonic()
        m = self.metrics
        if self.overload.overloaded:
            self._log_overload(m.value("steel_worker_frame_latency_seconds"))
        log.info(
            "stored %d, duplicate %d, dead-lettered %d frames; %d alarms; event lag %.1f s",
            m.value("steel_worker_frames_total", {"outcome": "stored"}),
            m.value("steel_worker_frames_total", {"outcome": "duplicate"}),
            m.value("steel_worker_frames_total", {"outcome": "dead_lettered"}),
            m.value("steel_worker_alarms_published_total"),
            m.value("steel_worker_event_lag_seconds"),
        )


def _age_s(message: Any) -> float:
    """Seconds since the message's timestamp (the camera sets it to captured_at); 0 when unknown."""
    try:
        kind, ms = message.timestamp()
    except (AttributeError, TypeError, ValueError):
        return 0.0
    if kind == 0 or ms <= 0:  # TIMESTAMP_NOT_AVAILABLE
        return 0.0
    return max(0.0, time.time() - ms / 1000.0)


def _first_line(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement and parameters (which may be long)."""
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]


def _describe(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
