"""Time-bucketed topics: how the frames and truth topics rotate so that a broker without retention
stays within bounded memory.

The embedded broker (Tansu) keeps every message in memory, ignores retention and frees memory only
when a topic is deleted. With rotation on, a message published at wall-clock time ``t`` goes to
``f"{topic}.{bucket}"`` with ``bucket = floor(t / rotation_s)``: every producer derives the same
name from its clock, with no coordination. The janitor (steelcore.kafka.consumed_buckets, run by
each worker's janitor thread) deletes a bucket once it is closed, consumed and out of every
worker's assignment.

Workers do not subscribe to the buckets: every change of a group's subscribed topics is a
rebalance, which stops the whole group (1-3 s on Tansu at every bucket period). They subscribe
to one *membership topic* that never changes and holds no messages (``members_topic``); the group
shares out its partitions, and a worker holding membership partition ``m`` consumes partition
``p`` of every bucket from the floor upwards where ``p % members == m`` (``bucket_partitions``),
assigned by the worker itself, from the offsets the group committed. New buckets and the floor
then change each worker's assignment without a rebalance; a worker that joins, leaves or dies
still moves membership partitions, and with them its buckets' partitions, as before.

A bucket is *closed* once no producer can still deliver into it: the camera producer picks the
bucket when it calls produce() and, while rotating, gives up on a message after
``topic_close_grace_s`` (its delivery timeout), so nothing lands in bucket ``b`` after
``(b + 1) * rotation_s + topic_close_grace_s``. The bucket is chosen by publish time rather than
capture time for that reason: a frame published late still lands in an open bucket.

Rotation is on by default for the embedded broker only (``embedded_topic_rotation_s``); a real
Kafka keeps one topic each and applies its own retention. The dead-letter topic never rotates:
it holds only rejected messages and is kept for inspection.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping

from steelcore.service_urls import is_embedded
from steelcore.settings import Settings

# How often a consumer of buckets lists the topics for new ones (workers) or re-evaluates its pattern
# subscription (librdkafka's metadata refresh, 5 min by default): buckets are created one period
# ahead, so a few seconds is ample.
SUBSCRIPTION_REFRESH_MS = 2000
MEMBERS_SUFFIX = "members"
# Truth buckets are read by live-accuracy monitors, not by the worker group: they are kept for this
# many buckets before the current one, and readers follow from the previous bucket onwards.
TRUTH_KEEP_BUCKETS = 2

_BUCKET_SUFFIX = re.compile(r"\.(0|[1-9][0-9]*)$")


def rotation_seconds(settings: Settings) -> float:
    """Bucket length in seconds for these settings; 0 = no rotation (one topic each)."""
    if settings.topic_rotation_s is not None:
        return float(settings.topic_rotation_s)
    return float(settings.embedded_topic_rotation_s) if is_embedded("kafka", settings) else 0.0


def bucket_of(epoch_s: float, rotation_s: float) -> int:
    """The bucket holding wall-clock time ``epoch_s`` (seconds since the Unix epoch)."""
    if not rotation_s > 0:
        raise ValueError(f"rotation_s must be > 0, got {rotation_s}")
    if not math.isfinite(epoch_s) or epoch_s < 0:
        raise ValueError(f"epoch_s must be a finite time after 1970, got {epoch_s}")
    return math.floor(epoch_s / rotation_s)


def bucket_topic(topic: str, bucket: int) -> str:
    if bucket < 0:
        raise ValueError(f"bucket must be >= 0, got {bucket}")
    return f"{topic}.{bucket}"


def bucket_number(topic: str, name: str) -> int | None:
    """The bucket of ``name`` if it is a bucket topic of ``topic`` (e.g. 'steel.frames.5'), else None.

    'steel.frames.truth.5' is not a bucket of 'steel.frames': only digits may follow the dot.
    """
    if not name.startswith(topic + "."):
        return None
    match = _BUCKET_SUFFIX.fullmatch(name[len(topic) :])
    return int(match.group(1)) if match else None


def bucket_end_s(bucket: int, rotation_s: float) -> float:
    """Wall-clock time at which bucket ``bucket`` stops being the current one."""
    return (bucket + 1) * rotation_s


def is_closed(bucket: int, rotation_s: float, grace_s: float, now_s: float) -> bool:
    """No producer can deliver into ``bucket`` any more (see the module docstring)."""
    return now_s >= bucket_end_s(bucket, rotation_s) + grace_s


def at_least_pattern(n: int) -> str:
    """A regular expression (no anchors) matching the decimal numbers >= ``n`` without leading zeros.

    Written with character classes, alternation and ``*`` only, the subset librdkafka's regex
    engine and Python's ``re`` agree on.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    digits = str(n)
    width = len(digits)
    options = [digits]
    for i, d in enumerate(digits):
        if d != "9":
            # Same prefix, a larger digit here, anything after it.
            options.append(digits[:i] + f"[{int(d) + 1}-9]" + "[0-9]" * (width - i - 1))
    options.append("[1-9]" + "[0-9]" * width + "[0-9]*")  # more digits than n
    return "(" + "|".join(options) + ")"


def literal_pattern(name: str) -> str:
    """``name`` as a regular expression matching itself (topic names allow [a-zA-Z0-9._-])."""
    if not name or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"not a valid Kafka topic name: {name!r}")
    return name.replace(".", r"\.")


def subscription_pattern(topic: str, floor: int) -> str:
    """A librdkafka pattern subscription to the buckets of ``topic`` numbered ``floor`` or more."""
    return f"^{literal_pattern(topic)}\\.{at_least_pattern(floor)}$"


def members_topic(topic: str) -> str:
    """The membership topic of ``topic``'s buckets: the worker group subscribes to it alone."""
    return f"{topic}.{MEMBERS_SUFFIX}"


def bucket_partitions(
    topic: str, partitions: Mapping[str, int], floor: int, members: Collection[int], member_count: int
) -> list[tuple[str, int]]:
    """The (bucket topic, partition) pairs of ``topic``'s buckets numbered ``floor`` or more that the
    holder of membership partitions ``members`` (of ``member_count``) consumes; ``partitions``
    maps each existing topic to its partition count. Ordered by bucket, then partition."""
    if member_count < 1:
        raise ValueError(f"member_count must be >= 1, got {member_count}")
    owned = set(members)
    buckets = sorted(
        (b, name) for name in partitions if (b := bucket_number(topic, name)) is not None and b >= floor
    )
    return [(name, p) for _, name in buckets for p in range(partitions[name]) if p % member_count in owned]
