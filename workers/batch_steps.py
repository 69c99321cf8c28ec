"""The steps of one batch, each done once even when a later one is retried (mixed into
workers.worker_loop.InferenceWorker, whose attributes they use).

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
(steelcore.kafka.dead_letter.DeadLetterProducer). A poison message must never crash the worker, or each
worker assigned its partition in turn would crash on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from steelcore.kafka.clients import TopicPartition
from steelcore.kafka.exceptions import KafkaException
from steelcore.postgres.exceptions import is_db_outage, is_refused_row
from steelcore.postgres.frame_records import StoreResult, merge_store_results
from steelcore.postgres.model_registry import shadow_pick
from steelcore.redis.exceptions import RedisError
from steelcore.triton.exceptions import TritonClientError
from steelcore.triton.inference_result import EnsembleResult
from workers.frame_batch import Batch, Rejected, ValidFrame, build_records, next_offsets, validate_message
from workers.shadow_runner import ShadowRunner
from workers.worker_errors import DeadLetterError, Outage, is_kafka_step_outage

log = logging.getLogger("steel.worker")


class BatchSteps:
    """Decode, infer, dead-letter, store, alarm, outbox and commit of one batch."""

    settings: Any
    metrics: Any
    consumer: Any
    inference: Any
    store: Any
    dead_letters: Any
    alarm_publisher: Any
    roles: Any
    shadow: ShadowRunner | None

    def _shadow_runner(self, engine: Any) -> ShadowRunner | None:
        """A runner asking the cascade of the worker's own Triton; None with injected inference."""
        from steelcore.postgres.defect_writes import write_shadow_results
        from steelcore.triton.ensemble_client import TritonEnsembleClient
        from workers.shadow_runner import SHADOW_MODEL

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
        self._await_inference(batch)
        if batch.dead_letters_pending is None:
            batch.dead_letters_pending = list(batch.rejects)
        self._dead_letter(batch)
        if batch.records and batch.stored is None:
            batch.stored = self._step("store", is_db_outage, self._store, batch)
        self._dead_letter(batch)  # the frames the database refused, if any
        if batch.alarms and batch.alarm_entries is None:
            assert self.alarm_publisher is not None
            batch.alarm_entries = self._step(
                "alarm", lambda e: isinstance(e, RedisError), self.alarm_publisher.publish, batch.alarms
            )
        if batch.alarm_entries and not batch.alarms_marked_published:
            assert self.store is not None
            published = [
                (a.frame_id, a.class_id, e) for a, e in zip(batch.alarms, batch.alarm_entries, strict=True)
            ]
            self._step("outbox", is_db_outage, self.store.mark_published, published)
            batch.alarms_marked_published = True
        if not batch.committed:
            self._step("commit", is_kafka_step_outage, self._commit, batch)
            batch.committed = True

    def _await_inference(self, batch: Batch) -> None:
        """Step 2: the batch's records and alarms from Triton's answer (once)."""
        if batch.records is not None:
            return
        if not batch.valid:
            batch.records = []
            return
        result, infer_s = self._step("infer", TritonClientError, self._infer, batch)
        records, alarms, bad = build_records(
            batch.valid, result, self.rule, received_at=batch.received_at, infer_s=infer_s,
            model_name=self.settings.model_name, model_version=self.model_version,
            labels=self._labels(result),
        )  # fmt: skip
        batch.rejects.extend(bad)
        refused = {id(r.message) for r in bad}
        batch.sources = [f.message for f in batch.valid if id(f.message) not in refused]
        batch.records, batch.alarms = records, alarms

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
            "dead_letter", is_kafka_step_outage, self.dead_letters.send, batch.dead_letters_pending
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

    def _request(self, batch: Batch) -> None:
        """Ask Triton for the batch's answer now; its infer step collects it. A request that cannot
        even be sent is left to the infer step, which sends it again and meets the error there."""
        assert self.inference is not None
        if not batch.valid:
            return
        batch.requested_at = time.perf_counter()
        try:
            batch.inference = self.inference.infer_async(_pixels(batch.valid))
        except Exception as exc:
            log.debug("inference request not sent now (the infer step sends it again): %s", exc)

    def _infer(self, batch: Batch) -> tuple[EnsembleResult, float]:
        """Triton's answer for the batch, and the seconds from its request to the answer (for a
        batch taken ahead, that includes its wait behind the one before in Triton's queue)."""
        assert self.inference is not None
        future, batch.inference = batch.inference, None  # an answer is used once: a retry asks again
        if future is None:
            batch.requested_at = time.perf_counter()
            future = self.inference.infer_async(_pixels(batch.valid))
        result = future.result()
        return result, time.perf_counter() - batch.requested_at

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


def _pixels(frames: Sequence[ValidFrame]) -> np.ndarray:
    return np.stack([f.pixels for f in frames])


def _first_line(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement and parameters (which may be long)."""
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
