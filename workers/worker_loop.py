"""The inference worker: Kafka frames -> Triton ensemble -> Postgres (defects) + Redis (alarms).

Life: ``setup`` (clients, schema migration, subscription), a loop of batches until
``stop_event`` is set (SIGTERM/SIGINT in `steel work`), ``teardown`` in ``finally`` (the consumer
leaves the group). Several workers in one consumer group share the partitions.

The worker is one class put together from the modules that hold its parts:
workers.consumer_session (subscription, rotation floor, rebalance callbacks, broker restarts, pause
and resume), workers.batch_steps (decode, infer, dead-letter, store, alarm, outbox and commit of
one batch), workers.worker_load (batch timing, overload, metrics of each batch),
workers.worker_readiness (/readyz checks) and workers.worker_wiring (building the parts from
settings in setup, closing them in teardown). This module holds its life, its loop and outages.

Inference ahead (WorkerConfig.infer_ahead): the frames waiting are taken as the next batch,
decoded and sent to Triton before the batch in hand is stored, alarmed and committed, so Triton
infers the next batch meanwhile instead of waiting for it. When the worker is catching up (frames
wait by the batchful, workers.batch_policy) the next batch is sent as soon as the one in hand is,
so Triton always has one queued; otherwise once Triton has answered the one in hand, so that the
next batch holds the frames that arrived during a whole inference rather than the one or two there
at its start (small batches cost more per frame and let a steady load fall behind). Batches are
still finished and committed one after the other, in offset order, so a worker that dies leaves
both uncommitted and they are redelivered (the idempotent write absorbs the repeat).

Outages (Triton, Postgres, Redis or Kafka unreachable): the batch stays in hand, the assignment is
paused, and the failed step is retried with capped exponential backoff while the consumer keeps
being served, so the group membership survives; consumption resumes once the batch is through.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from steelcore.kafka.clients import BrokerIncarnation
from steelcore.kafka.consumed_buckets import ConsumedBucketDeleter
from steelcore.kafka.topic_rotation import rotation_seconds
from steelcore.settings import Settings, get_settings
from workers.alarm_relay import AlarmRelay
from workers.alarm_rules import AlarmRule
from workers.backoff import Backoff
from workers.batch_policy import BatchPolicy, OverloadDetector
from workers.batch_steps import BatchSteps
from workers.consumer_session import ConsumerSession
from workers.drift_watch import DriftWatch
from workers.frame_batch import Batch
from workers.model_roles import RoleWatch
from workers.periodic_thread import PeriodicThread
from workers.shadow_runner import ShadowRunner
from workers.worker_config import WorkerConfig
from workers.worker_errors import BatchAbandonedError, Outage
from workers.worker_load import WorkerLoad
from workers.worker_metrics import WorkerMetrics
from workers.worker_probes import WorkerProbes
from workers.worker_protocols import AlarmPublisher, DeadLetterSink, Inference, Store
from workers.worker_readiness import ReadinessChecks
from workers.worker_wiring import WorkerWiring

__all__ = ["InferenceWorker", "WorkerConfig"]

log = logging.getLogger("steel.worker")


class InferenceWorker(WorkerWiring, ConsumerSession, BatchSteps, WorkerLoad, ReadinessChecks):
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
        janitor: ConsumedBucketDeleter | None = None,
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
        self._relay_thread: PeriodicThread | None = None
        self.rotation_s = rotation_seconds(self.settings)
        self._janitor_thread: PeriodicThread | None = None
        # With topic rotation: the bucket floor applied to the assignment, the membership partitions
        # held, and the topics last listed (name -> partitions) with the time of the next listing.
        self._floor: int | None = None
        self._members: set[int] = set()
        self._topic_partitions: dict[str, int] = {}
        self._next_topic_list = 0.0
        self.rule = AlarmRule.from_settings(self.settings)
        self.model_version = self.config.model_version or self.settings.triton_model
        self.stop_event = threading.Event()
        self._backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        self._paused = False
        # Fetched while paused, with the log epoch they were read in; handled before consuming more.
        self._carry: list[tuple[int, Any]] = []
        self._ahead: Batch | None = None  # the next batch, already sent to Triton (infer_ahead)
        self._rebalances = 0
        self._stop_deadline: float | None = None
        self._redis: Any = None
        self._last_log = time.monotonic()
        self._embedded_kafka = True
        # The embedded broker's restarts (see workers.consumer_session): the incarnation last seen, a
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
            # A batch taken ahead is finished on stop too: its answer is on the way.
            while not self.stop_event.is_set() or self._ahead is not None:
                self.run_once()
        finally:
            self.teardown()

    # --- one batch ------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Consume one batch and see it through; returns the number of messages handled."""
        assert self.consumer is not None
        self.probes.beat()
        if self.roles is not None:
            self.roles.poll()
        self._follow_buckets()  # new buckets join the assignment; drained ones leave it before deletion
        if self._incarnation is not None and (self._unreset or time.monotonic() >= self._next_broker_check):
            self._check_broker(quiet=True)
        batch, self._ahead = self._ahead, None
        if batch is None:
            batch = self._take(self.config.batch_wait_s)
        if batch is not None:
            self.metrics.batch_frames.observe(len(batch.messages))
            started, self._held = time.monotonic(), False
            self._process(batch)
            self._judge_load(batch, time.monotonic() - started)
        self._maybe_log()
        return len(batch.messages) if batch is not None else 0

    def _take(self, wait_s: float, *, ahead: bool = False) -> Batch | None:
        """The next batch, decoded and sent to Triton: the messages kept while held first (one
        batch never mixes messages of two logs), else a fetch waiting up to wait_s."""
        if self._carry:
            epoch = self._carry[0][0]
            taken = list(itertools.takewhile(lambda c: c[0] == epoch, self._carry[: self.config.batch_size]))
            self._carry = self._carry[len(taken) :]
            usable = [message for _, message in taken]
        else:
            epoch = self._log_epoch
            usable = self._fetch(wait_s, ahead=ahead)
        if not usable:
            return None
        batch = Batch(usable, datetime.now(UTC), self._rebalances, log_epoch=epoch)
        self._decode(batch)
        self._request(batch)
        return batch

    def _take_ahead(self) -> None:
        """Take the frames waiting as the next batch and send it to Triton now, so that it is
        inferred while the batch in hand is stored. Not while held or stopping, not before the
        messages kept while held (they come first)."""
        if not self.config.infer_ahead or self._ahead is not None or self._paused or self._carry:
            return
        if self.stop_event.is_set():
            return
        self._ahead = self._take(0.0, ahead=True)

    def _catching_up(self, batch: Batch) -> bool:
        """The batch's oldest frame is late enough that the batch policy takes the largest batches."""
        return bool(batch.valid) and self.batching.catching_up(batch.oldest_lag_s())

    def _fetch(self, wait_s: float, *, ahead: bool = False) -> list[Any]:
        """Wait up to wait_s for a frame, then take the frames already waiting, as many as the
        batch policy allows for the first one's lag (workers.batch_policy)."""
        assert self.consumer is not None
        fetched = self.consumer.consume(num_messages=1, timeout=wait_s)
        usable = [m for m in fetched if not self._is_error(m)]
        if not usable:
            # A look ahead that finds nothing says nothing of idleness: a batch is in hand.
            if not fetched and not ahead and self.overload.idle(time.monotonic()):
                self.metrics.overloaded.set(0)  # nothing waits: whatever the lag was, it is gone
                log.warning("load back within what this worker serves: nothing waiting")
            return usable
        limit = self.batching.choose(self.config.batch_size, _age_s(usable[0]))
        self.metrics.batch_limit.set(limit)
        if limit > 1:
            more = self.consumer.consume(num_messages=limit - 1, timeout=0)
            usable += [m for m in more if not self._is_error(m)]
        return usable

    def _process(self, batch: Batch) -> None:
        self._backoff.reset()
        if self._catching_up(batch):
            self._take_ahead()  # frames wait by the batchful: Triton gets the next one at once
        while True:
            try:
                self._await_inference(batch)
                self._take_ahead()
                self._advance(batch)
                break
            except Outage as outage:
                self._hold(batch, outage)
        if self._paused:
            self._resume()
        self._record_outcome(batch)
        self._offer_shadow(batch)

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
        self._poll_while_held(delay)


def _age_s(message: Any) -> float:
    """Seconds since the message's timestamp (the camera sets it to captured_at); 0 when unknown."""
    try:
        kind, ms = message.timestamp()
    except (AttributeError, TypeError, ValueError):
        return 0.0
    if kind == 0 or ms <= 0:  # TIMESTAMP_NOT_AVAILABLE
        return 0.0
    return max(0.0, time.time() - ms / 1000.0)
