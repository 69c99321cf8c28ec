"""Faults of the worker and of its model server: SIGKILL in the middle of a batch, Triton stopped
and restarted, and a flood of malformed messages. Each case ends with the same audit
(fault_stack.FaultCase.audit): every produced frame is exactly one frames row or one dead-letter
record, no duplicates, every alarm published, acted on by the actuator and acknowledged."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pytest
from fault_stack import CAMERAS, KAFKA_LOG, FaultCase, wait_until

from stack.triton_server import TritonServer
from steelcore.frame_message import MAGIC, FrameHeader, encode_frame, encode_image
from steelcore.kafka.client_config import producer_config
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


def test_kill_9_in_the_middle_of_a_batch(
    fault_case: Callable[..., FaultCase], record_outcome: Callable[[dict], None]
) -> None:
    """Two workers share the frames; one is killed with SIGKILL in the middle of a batch: after
    its transaction stored the batch and its alarms were published, before the offsets were
    committed (a database trigger holds it there). Expected: the surviving worker is assigned
    the dead worker's partitions after the session timeout, the batch is redelivered, the
    idempotent write adds no row (the frames count as duplicates), its alarms are published again
    under the same ids, and every frame ends as exactly one row with every alarm acknowledged."""
    case = fault_case("kill-9")
    case.install_alarm_gate()
    case.start_actuator()
    with case.gate_closed():
        workers = {w.name: w for w in (case.start_worker("w1"), case.start_worker("w2"))}
        ids = case.publish(12, cameras=CAMERAS)
        wait_until(lambda: bool(case.waiting_at_gate()), "a worker to hold a stored, uncommitted batch")
        victim = workers[case.waiting_at_gate()[0]]
        stored_at_kill = case.stored()
        victim.kill9()
        killed = time.monotonic()
    survivor = next(w for w in workers.values() if w is not victim)
    settle_s = case.settle(len(ids))
    outcome = {
        "frames_stored_when_killed": stored_at_kill,
        "seconds_kill_to_all_stored": round(time.monotonic() - killed, 1),
        "settle_s": round(settle_s, 1),
        **case.audit(ids),
        **case.finish_workers([survivor]),
    }
    record_outcome(outcome)
    assert outcome["duplicates_absorbed"] >= 1, "the killed batch was not redelivered"
    assert outcome["alarms_republished"] >= 1, "the killed batch's alarms were not published again"


def test_triton_stopped_and_restarted(
    fault_case: Callable[..., FaultCase],
    fault_triton: TritonServer,
    record_outcome: Callable[[dict], None],
) -> None:
    """Triton is stopped (SIGTERM) while frames keep coming, and started again. Expected: the
    worker's inference fails as "unavailable", it pauses consumption and holds its batch (no
    frame stored or committed while Triton is away), and once Triton is ready again it resumes
    and every frame is stored exactly once with every alarm acknowledged."""
    case = fault_case("triton-restart")
    worker = case.start_worker("w1")
    case.start_actuator()
    first = case.publish(6)
    case.settle(len(first))
    down = time.monotonic()
    fault_triton.stop()
    try:
        second = case.publish(8)
        wait_until(lambda: worker.metric("steel_worker_paused") == 1, "the worker to pause", 60)
        paused_after = time.monotonic() - down
        stored_while_down = case.stored()
        time.sleep(2.0)
        stored_later = case.stored()
    finally:
        fault_triton.start(timeout_s=240)
    back = time.monotonic()
    settle_s = case.settle(len(first) + len(second))
    outcome = {
        "triton_down_s": round(back - down, 1),
        "seconds_stop_to_pause": round(paused_after, 1),
        "frames_stored_while_down": stored_later - stored_while_down,
        "seconds_ready_to_all_stored": round(settle_s, 1),
        **case.audit(first + second),
        **case.finish_workers([worker]),
    }
    record_outcome(outcome)
    assert outcome["frames_stored_while_down"] == 0
    assert outcome["failed_attempts_by_stage"].get("infer", 0) >= 1


# --- malformed input --------------------------------------------------------------------------


_DROP = object()  # a header change that removes the field


def _good_header(frame_id: str) -> FrameHeader:
    return FrameHeader(
        frame_id=frame_id, line_id="LF", camera_id="flood", coil_id="LF-flood-0000", position_m=1.5,
        captured_at=datetime.now(UTC),
    )  # fmt: skip


def _header(frame_id: str, **changes: object) -> dict:
    """A valid header as JSON, with ``changes`` applied."""
    header = {**_good_header(frame_id).to_json(), **changes}
    return {k: v for k, v in header.items() if v is not _DROP}


def _message(header: dict, image: bytes) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack(">4sI", MAGIC, len(body)) + body + image


def malformed_messages(image: np.ndarray, tag: str, max_bytes: int) -> dict[str, tuple[bytes | None, str]]:
    """probe id -> (message value, regex the dead-letter reason must match)."""
    jpeg = encode_image(image, "jpeg")
    small = encode_image(np.ascontiguousarray(image[:, :800]), "jpeg")
    # A decompression bomb: 60 KB of PNG that decodes to 64 MB of pixels.
    bomb = encode_image(np.zeros((8000, 8000), np.uint8), "png")
    rng = np.random.default_rng(5)
    p = f"bad-{tag}"
    cases: dict[str, tuple[bytes | None, str]] = {
        f"{p}-random-7": (rng.bytes(7), "shorter than the frame prefix"),
        f"{p}-random-1k": (rng.bytes(1000), "bad magic"),
        f"{p}-random-100k": (rng.bytes(100_000), "bad magic"),
        f"{p}-empty": (b"", "shorter than the frame prefix"),
        f"{p}-tombstone": (None, "tombstone"),
        f"{p}-header-huge": (struct.pack(">4sI", MAGIC, 1_000_000) + b"{}", "header length 1000000 exceeds"),
        f"{p}-header-cut": (struct.pack(">4sI", MAGIC, 500) + b'{"frame_id":', "truncated inside the header"),
        f"{p}-header-not-json": (_message_raw(b"{not json", jpeg), "not valid JSON"),
        f"{p}-header-not-utf8": (_message_raw(b"\xff\xfe\x00", jpeg), "not valid JSON"),
        f"{p}-header-array": (_message_raw(b"[1, 2]", jpeg), "not a JSON object"),
        f"{p}-missing-coil": (
            _message(_header(f"{p}-missing-coil", coil_id=_DROP), jpeg),
            "misses field.*coil_id",
        ),
        f"{p}-extra-field": (
            _message(_header(f"{p}-extra-field", exposure=3), jpeg),
            "unknown field.*exposure",
        ),
        f"{p}-position-text": (_message(_header(f"{p}-position-text", position_m="ten"), jpeg), "position_m"),
        f"{p}-position-negative": (
            _message(_header(f"{p}-position-negative", position_m=-1), jpeg),
            "position_m",
        ),
        f"{p}-naive-time": (
            _message(_header(f"{p}-naive-time", captured_at="2025-01-01T00:00:00"), jpeg),
            "time zone",
        ),
        f"{p}-id-too-long": (_message(_header("x" * 200), jpeg), "frame_id must be"),
        f"{p}-schema-2": (_message(_header(f"{p}-schema-2", schema_version=2), jpeg), "schema_version 2"),
        f"{p}-schema-missing": (
            _message(_header(f"{p}-schema-missing", schema_version=_DROP), jpeg),
            "schema_version None",
        ),
        f"{p}-encoding-gif": (
            _message(_header(f"{p}-encoding-gif", encoding="gif"), jpeg),
            "encoding must be",
        ),
        f"{p}-width-0": (_message(_header(f"{p}-width-0", width=0), jpeg), "width must be"),
        f"{p}-width-huge": (_message(_header(f"{p}-width-huge", width=20_000), jpeg), "width must be"),
        f"{p}-800-wide": (_message(_header(f"{p}-800-wide", width=800), small), "ensemble takes"),
        f"{p}-header-lies": (_message(_header(f"{p}-header-lies"), small), "declares 800x256"),
        f"{p}-jpeg-truncated": (
            _message(_header(f"{p}-jpeg-truncated"), jpeg[: len(jpeg) // 2]),
            "not a decodable",
        ),
        f"{p}-jpeg-garbage": (_message(_header(f"{p}-jpeg-garbage"), rng.bytes(5000)), "not a JPEG"),
        f"{p}-raw-short": (
            _message(_header(f"{p}-raw-short", encoding="raw"), bytes(FRAME_WIDTH * FRAME_HEIGHT - 1)),
            "raw image",
        ),
        f"{p}-no-image": (_message(_header(f"{p}-no-image"), b""), "no image bytes"),
        f"{p}-oversized": (
            _message(_header(f"{p}-oversized", encoding="raw"), bytes(max_bytes + 200_000)),
            "exceeds the limit",
        ),
        f"{p}-png-bomb": (_message(_header(f"{p}-png-bomb", encoding="png"), bomb), "declares 8000x8000"),
    }
    return cases


def _message_raw(header_bytes: bytes, image: bytes) -> bytes:
    return struct.pack(">4sI", MAGIC, len(header_bytes)) + header_bytes + image


def test_a_flood_of_malformed_messages(
    fault_case: Callable[..., FaultCase],
    fault_images: np.ndarray,
    record_outcome: Callable[[dict], None],
) -> None:
    """Good frames, then a flood of malformed messages (random bytes, empty and tombstone values,
    bad header lengths, headers that are not JSON or not objects, missing, unknown and wrongly
    typed fields, a wrong schema version, bad encodings and dimensions, truncated and garbage
    JPEG, short raw pixels, no image, a message over the size limit, a PNG decompression bomb)
    and exact repeats of good frames (a producer retry), then good frames again. Expected: the
    worker stays up; each malformed message becomes exactly one dead-letter record whose reason
    names the problem (the oversized one cut to the limit, its size in a header; the bomb refused
    from its declared size, never decoded); each good frame, repeated or not, is exactly one row;
    every alarm is acknowledged."""
    from confluent_kafka import Producer

    max_bytes = 1_000_000
    case = fault_case("flood", max_frame_bytes=max_bytes)
    worker = case.start_worker("w1", verbose=True)
    case.start_actuator()
    before = case.publish(4)
    bad = malformed_messages(fault_images[0], case.tag, max_bytes)
    repeats = {}
    for k in range(3):
        frame_id = f"repeat-{case.tag}-{k}"
        repeats[frame_id] = encode_frame(_good_header(frame_id), encode_image(fault_images[k], "jpeg"))
    producer = Producer(producer_config(case.settings, {**KAFKA_LOG, "message.max.bytes": 4 * max_bytes}))
    delivered: list[str] = []

    def report(err: object, msg: object) -> None:
        if err is None:
            delivered.append(msg.key().decode())  # type: ignore[attr-defined]

    started = time.monotonic()
    for probe, (value, _) in bad.items():
        # The probe id also travels as the frame_id message header, which the dead letter keeps.
        producer.produce(
            case.settings.frames_topic, value=value, key=probe.encode(),
            headers=[("frame_id", probe.encode()), ("origin", b"\xff\x00 not utf-8")], on_delivery=report,
        )  # fmt: skip
    for frame_id, value in repeats.items():
        for _ in range(2):
            producer.produce(
                case.settings.frames_topic, value=value, key=frame_id.encode(),
                headers=[("frame_id", frame_id.encode())], on_delivery=report,
            )  # fmt: skip
    assert producer.flush(30) == 0 and len(delivered) == len(bad) + 2 * len(repeats)
    after = case.publish(4)
    rows = before + list(repeats) + after
    settle_s = case.settle(len(rows))
    audit = case.audit(rows, dead={probe: reason for probe, (_, reason) in bad.items()})
    letters = case.read_topic(case.settings.dead_letter_topic, len(bad), timeout_s=10, linger_s=0.2)
    oversized = next(m for m in letters if m.key().decode().endswith("-oversized"))
    headers = dict(oversized.headers())
    assert len(oversized.value()) == max_bytes
    assert int(headers["steel.dlq.original_bytes"]) == len(bad[f"bad-{case.tag}-oversized"][0] or b"")
    assert headers["origin"] == b"\xff\x00 not utf-8", "the original headers travel with the dead letter"
    outcome = {
        "malformed_sent": len(bad),
        "repeats_sent": 2 * len(repeats),
        "good_frames_sent": len(before) + len(after),
        "seconds_to_settle": round(time.monotonic() - started, 1),
        "settle_s": round(settle_s, 1),
        **audit,
        **case.finish_workers([worker]),
    }
    record_outcome(outcome)
    assert outcome["duplicates_absorbed"] == len(repeats)
    assert outcome["dead_lettered"] == len(bad)
