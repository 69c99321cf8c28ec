"""Building and closing the worker's parts (mixed into workers.worker_loop.InferenceWorker, whose
attributes it uses). setup() builds from settings every part not passed in and subscribes;
teardown() closes them one step at a time, leaving behind a step that hangs."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from steelcore.kafka.clients import BrokerIncarnation
from steelcore.kafka.consumed_buckets import deleter_from_settings
from steelcore.redis.alarm_stream import AlarmStream
from workers.alarm_relay import AlarmRelay
from workers.consumer_session import BROKER_CHECK_TIMEOUT_S
from workers.drift_watch import DriftWatch, client_of
from workers.model_roles import RoleWatch
from workers.periodic_thread import PeriodicThread
from workers.postgres_store import PostgresStore
from workers.topic_janitor import delete_consumed_buckets

log = logging.getLogger("steel.worker")

# Longest one teardown step may take before it is left behind (see _close_within).
TEARDOWN_STEP_S = 10.0


class WorkerWiring:
    """setup() and teardown() of InferenceWorker."""

    settings: Any
    config: Any
    metrics: Any
    probes: Any

    def setup(self) -> None:
        from steelcore import service_urls

        s = self.settings
        self.probes.beat()  # the startup waits below are bounded (startup_timeout_s, connect timeouts)
        self.metrics.serve(self.config.metrics_port, addr=s.worker_metrics_address, probes=self.probes)
        self._embedded_kafka = service_urls.is_embedded("kafka", s)
        if self.inference is None:
            from steelcore.triton.ensemble_client import TritonEnsembleClient

            client = TritonEnsembleClient(
                service_urls.triton_url(s), s.triton_protocol, s.triton_model, s.triton_timeout_s
            )
            self.inference = client
            client.wait_ready(self.config.startup_timeout_s)
        if self.store is None:
            from steelcore.postgres.engine import create_db_engine
            from steelcore.postgres.migrate import upgrade

            url = service_urls.postgres_url(s)
            upgrade(url)
            self.store = PostgresStore(create_db_engine(url), s)
        if self.alarm_publisher is None:
            from steelcore.redis.connection import alarm_stream_from_settings, check_reachable

            stream = alarm_stream_from_settings(s)
            check_reachable(stream.client)
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
            relay_pass = self.alarm_relay.run_once
            self._relay_thread = PeriodicThread("alarm-relay", relay_pass, s.alarm_relay_interval_s)
            self._relay_thread.start()
        if self.dead_letters is None or self.consumer is None:
            self._setup_kafka()
        if self.rotation_s > 0:
            if self.janitor is None:
                self.janitor = deleter_from_settings(s, self.group_id, self.rotation_s, self.worker_id)
            self.janitor.delete_consumed()  # the floor, before the first subscription
            janitor = functools.partial(delete_consumed_buckets, self.janitor)
            self._janitor_thread = PeriodicThread(
                "bucket-janitor", janitor, s.topic_janitor_interval_s, on_clock_multiples=True
            )
            self._janitor_thread.start()
        self.probes.beat()
        self._subscribe()
        if self._embedded_kafka:
            self._incarnation = BrokerIncarnation(timeout_s=BROKER_CHECK_TIMEOUT_S)
            self._check_broker(quiet=True)  # records the cluster id of the log being read

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
