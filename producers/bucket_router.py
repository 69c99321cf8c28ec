"""Which topics a camera message goes to when it is published now (steelcore.kafka.topic_rotation).

Without rotation: the frames and truth topics themselves. With rotation: their bucket for the
current wall-clock time. Each bucket is created before its first message, together with the next
one, so that workers (which list the topics every few seconds and assign themselves their share of
each bucket, workers.consumer_session) already consume the next bucket when the clock reaches it.
While workers run, their janitors have usually created both already, at their last floor move
(steelcore.kafka.consumed_buckets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from steelcore.kafka.topic_rotation import bucket_of, bucket_topic

log = logging.getLogger(__name__)


class BucketRouter:
    def __init__(
        self,
        frames_topic: str,
        truth_topic: str,
        rotation_s: float,
        create: Callable[[Sequence[str]], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rotation_s < 0:
            raise ValueError(f"rotation_s must be >= 0, got {rotation_s}")
        self.frames_topic, self.truth_topic = frames_topic, truth_topic
        self.rotation_s = rotation_s
        self._create = create
        self._clock = clock
        self._bucket: int | None = None
        self._prepared: set[int] = set()
        self.used: set[str] = set()  # topics a message was routed to

    @property
    def rotating(self) -> bool:
        return self.rotation_s > 0

    def route(self) -> tuple[str, str]:
        """(frames topic, truth topic) for a message published now."""
        if not self.rotating:
            topics = (self.frames_topic, self.truth_topic)
        else:
            bucket = bucket_of(self._clock(), self.rotation_s)
            if bucket != self._bucket:
                self._prepare(bucket)
                self._bucket = bucket
            topics = (bucket_topic(self.frames_topic, bucket), bucket_topic(self.truth_topic, bucket))
        self.used.update(topics)
        return topics

    def _prepare(self, bucket: int) -> None:
        wanted = [b for b in (bucket, bucket + 1) if b not in self._prepared]
        if not wanted:
            return
        names = [bucket_topic(t, b) for b in wanted for t in (self.frames_topic, self.truth_topic)]
        if self._create is not None:
            self._create(names)
        self._prepared.update(wanted)
        log.info("publishing to bucket %d (%s)", bucket, ", ".join(names))
