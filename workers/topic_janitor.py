"""The worker's janitor thread: runs the bucket deleter (steelcore.kafka.consumed_buckets) on a timer."""

from __future__ import annotations

import logging
import threading

from steelcore.kafka.consumed_buckets import ConsumedBucketDeleter, DeletionReport
from steelcore.kafka.exceptions import KafkaException

log = logging.getLogger(__name__)


class JanitorThread:
    """Runs ``deleter.delete_consumed`` every ``interval_s`` in the background until stopped."""

    def __init__(self, deleter: ConsumedBucketDeleter, interval_s: float) -> None:
        self.deleter, self.interval_s = deleter, interval_s
        self.last_report: DeletionReport | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bucket-janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.last_report = self.deleter.delete_consumed()
            except (KafkaException, TimeoutError) as exc:  # the broker is away: try again next time
                log.warning("bucket check failed: %s", exc)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
