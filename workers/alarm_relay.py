"""The alarm outbox relay, and the alarm stream's trimming, run by every worker in the background.

The alarms table is an outbox: a row whose ``published_at`` is NULL was stored but is not known
to be on the Redis stream. The worker that stored it publishes it a few milliseconds later; if
that worker dies first and its Kafka batch is never redelivered (the embedded broker lost its
log in a restart, or a stop gave up on the batch during a Redis outage), only this relay ever
publishes it. Every ``alarm_relay_interval_s`` it publishes the rows raised more than
``alarm_relay_min_age_s`` ago and still unpublished, oldest first, under their usual alarm ids
(an actuator recognises a repeat), then trims the stream (steelcore.redis.alarm_stream.AlarmStream.trim).

Several workers run relays on one database: each relay pass locks the rows it takes
(steelcore.postgres.alarm_outbox.relay_unpublished_alarms), so they share the backlog instead of each
publishing all of it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from steelcore.alarm_message import Alarm
from steelcore.postgres.alarm_outbox import PendingAlarm, relay_unpublished_alarms
from steelcore.redis.alarm_stream import AlarmStream, TrimResult
from steelcore.redis.exceptions import RedisError
from steelcore.settings import Settings
from workers.alarm_rules import frame_alarm
from workers.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)


def alarm_of(pending: PendingAlarm) -> Alarm:
    """The stream alarm of a stored row: the same fields and id the worker would have published."""
    return frame_alarm(pending, pending.class_id, pending.probability, pending.area_px)


class AlarmRelay:
    """Publishes the outbox's stale rows and trims the stream; one pass per ``run_once``."""

    def __init__(
        self,
        engine: Any,
        stream: AlarmStream,
        metrics: WorkerMetrics,
        min_age_s: float,
        batch: int,
    ) -> None:
        self.engine, self.stream, self.metrics = engine, stream, metrics
        self.min_age_s, self.batch = min_age_s, batch

    @classmethod
    def from_settings(
        cls, engine: Any, stream: AlarmStream, metrics: WorkerMetrics, settings: Settings
    ) -> AlarmRelay:
        return cls(engine, stream, metrics, settings.alarm_relay_min_age_s, settings.alarm_relay_batch)

    def relay(self) -> int:
        """Publish and mark up to a few batches of stale unpublished alarms; the number relayed."""
        total = 0
        for _ in range(10):  # a bounded pass: the next one goes on, the thread stays stoppable
            cutoff = datetime.now(UTC) - timedelta(seconds=self.min_age_s)
            n = relay_unpublished_alarms(
                self.engine, lambda rows: self.stream.publish([alarm_of(r) for r in rows]), cutoff, self.batch
            )
            total += n
            if n < self.batch:
                break
        if total:
            self.metrics.alarms_relayed.inc(total)
            log.warning("relayed %d stored alarm(s) unpublished for over %g s", total, self.min_age_s)
        return total

    def trim(self) -> TrimResult:
        result = self.stream.trim()
        self.metrics.alarm_stream_trimmed.inc(result.acknowledged)
        self.metrics.alarms_trimmed_unacknowledged.inc(result.unacknowledged)
        self.metrics.alarm_stream_length.set(result.length)
        return result

    def run_once(self) -> None:
        """Relay, then trim; a service that is away fails its step until the next pass."""
        for stage, step in (("relay", self.relay), ("trim", self.trim)):
            try:
                step()
            except (RedisError, SQLAlchemyError) as exc:
                self.metrics.errors.labels(stage).inc()
                log.warning("alarm %s failed (%s); next try in the next pass", stage, exc)
