"""Poison messages: whatever bytes arrive, a message ends stored or dead-lettered with a reason, its
offset is committed, and the worker keeps running (issue 13, section 1).

The codec may only ever raise FrameMessageError; the worker's validation never raises at all; a
dead letter the broker refuses as too large is sent again smaller; a row the database refuses for
its content is dead-lettered alone while the rest of its batch is stored. Also: a captured_at
ahead of the worker's clock, and the stored image's encoding taken from the header. The same
poison frames go through two workers on the embedded stack in tests/integration/test_poison_frames.py.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import DataError, IntegrityError
from worker_fakes import TOPIC, FakeMessage, frame_value, make_worker, records_of, stage_order

from steelcore.frame_message import (
    MAGIC,
    MAX_HEADER_BYTES,
    FrameHeader,
    FrameMessageError,
    decode_frame,
    encode_frame,
    encode_image,
)
from steelcore.kafka.dead_letter import DLQ_HEADER_PREFIX, FALLBACK_VALUE_BYTES, DeadLetterProducer
from steelcore.postgres.defect_writes import _image_row
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from steelcore.triton.inference_result import EnsembleResult
from workers.frame_batch import Rejected, ValidFrame, validate_message

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def good_header(**changes: object) -> dict[str, Any]:
    header = FrameHeader(
        frame_id="L1-cam-000001",
        line_id="L1",
        camera_id="cam",
        coil_id="K1",
        position_m=12.5,
        captured_at=NOW,
        encoding="raw",
    ).to_json()
    header.update(changes)
    return header


def envelope(header_bytes: bytes, image: bytes = b"img") -> bytes:
    return struct.pack(">4sI", MAGIC, len(header_bytes)) + header_bytes + image


def message_with(image: bytes = b"img", **changes: object) -> bytes:
    return envelope(json.dumps(good_header(**changes)).encode(), image)


def nested(depth: int) -> bytes:
    """A header whose frame_id is a list nested ``depth`` deep (within the header cap)."""
    return envelope(b'{"frame_id": ' + b"[" * depth + b"]" * depth + b"}")


# The poison frames of issue 13: each raised something other than FrameMessageError in the codec,
# or passed validation and could not be stored. probe -> (message value, the reason must contain).
POISON: dict[str, tuple[bytes, str]] = {
    "time-before-year-1": (message_with(captured_at="0001-01-01T00:00:00+01:00"), "outside the years"),
    "time-after-9999": (message_with(captured_at="9999-12-31T23:59:59-01:00"), "outside the years"),
    "position-400-digits": (
        envelope(
            json.dumps(good_header()).replace('"position_m": 12.5', '"position_m": ' + "9" * 400).encode()
        ),
        "position_m must be <=",
    ),
    "position-1e39": (message_with(position_m=1e39), "position_m must be <="),
    "nested-1000": (nested(1000), "nested too deeply"),
    "nested-2000": (nested(2000), "nested too deeply"),
    "schema-true": (message_with(schema_version=True), "unsupported schema_version True"),
    "schema-1.0": (message_with(schema_version=1.0), "unsupported schema_version 1.0"),
}


@pytest.mark.parametrize("probe", sorted(POISON))
def test_poison_headers_are_rejected_with_a_reason(probe: str) -> None:
    value, reason = POISON[probe]
    assert len(value) - 8 <= MAX_HEADER_BYTES + 3
    with pytest.raises(FrameMessageError) as raised:
        decode_frame(value)
    assert reason in raised.value.reason
    assert len(raised.value.reason) < 300  # a readable reason, never the 400 digits


def test_a_position_below_a_micrometre_is_stored_as_zero() -> None:
    # 1e-300 passed validation and failed the insert into the REAL column (underflow).
    assert decode_frame(message_with(position_m=1e-300)).header.position_m == 0.0
    assert decode_frame(message_with(position_m=0.256)).header.position_m == 0.256


@pytest.mark.parametrize(
    ("field", "value"),
    [("width", True), ("height", 256.0), ("position_m", True), ("frame_id", 7), ("encoding", ["raw"])],
)
def test_no_other_field_takes_a_bool_or_a_float_for_an_int(field: str, value: object) -> None:
    with pytest.raises(FrameMessageError, match=field):
        decode_frame(message_with(**{field: value}))


# --- properties: nothing but a frame or a reason ---------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda m: f"{m // 60:+03d}:{abs(m) % 60:02d}"
)
times = st.one_of(
    st.builds(
        lambda d, off: d.strftime("%Y-%m-%dT%H:%M:%S") + off,
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        offsets,
    ),
    st.text(max_size=30),
    json_values,
)
field_values = {
    "schema_version": st.one_of(st.just(1), json_values),
    "frame_id": st.one_of(st.text(min_size=1, max_size=140), json_values),
    "position_m": st.one_of(
        st.floats(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.sampled_from([1e39, 1e-300, 5e-324]),
    ),
    "captured_at": times,
    "encoding": st.one_of(st.sampled_from(["raw", "jpeg", "png"]), json_values),
    "width": st.one_of(st.just(FRAME_WIDTH), st.booleans(), st.integers(), json_values),
    "height": st.one_of(st.just(FRAME_HEIGHT), st.floats(), st.integers(), json_values),
}
headers = st.fixed_dictionaries({}, optional={name: strategy for name, strategy in field_values.items()}).map(
    lambda changes: good_header(**changes)
) | st.dictionaries(st.text(max_size=12), json_values, max_size=6)
images = st.one_of(
    st.binary(max_size=64),
    st.just(bytes(FRAME_WIDTH * FRAME_HEIGHT)),
    st.just(b"\xff\xd8\xff" + bytes(FRAME_WIDTH * FRAME_HEIGHT - 3)),
    st.just(b"\x89PNG\r\n\x1a\n" + bytes(40)),
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_outcome(value: bytes | None) -> None:
    """The property: the codec raises nothing but FrameMessageError, and the worker's validation
    answers a frame or a rejection with a reason."""
    try:
        decode_frame(value, max_bytes=8 << 20)
    except FrameMessageError as exc:
        assert isinstance(exc.reason, str) and exc.reason
    checked = validate_message(FakeMessage(value, 0, 0), 8 << 20, max_ahead_s=60.0, now=NOW)
    assert isinstance(checked, ValidFrame | Rejected)
    if isinstance(checked, Rejected):
        assert isinstance(checked.reason, str) and checked.reason
        assert not checked.reason.startswith("unexpected error"), checked.reason  # every case is named


@PROPERTY
@given(st.binary(max_size=300) | st.binary(max_size=40).map(lambda b: MAGIC + b))
def test_arbitrary_bytes_give_a_frame_or_a_reason(value: bytes) -> None:
    check_outcome(value)


@PROPERTY
@given(headers, images)
def test_arbitrary_json_headers_give_a_frame_or_a_reason(header: dict, image: bytes) -> None:
    try:
        body = json.dumps(header).encode()
    except ValueError:  # an integer too long for str() (Python's digit limit): no producer sends it
        return
    check_outcome(envelope(body[: MAX_HEADER_BYTES + 100], image))


@PROPERTY
@given(st.binary(min_size=1, max_size=MAX_HEADER_BYTES), images)
def test_arbitrary_header_bytes_give_a_frame_or_a_reason(header_bytes: bytes, image: bytes) -> None:
    check_outcome(envelope(header_bytes, image))


# --- a camera clock set wrong -------------------------------------------------------------------------


def raw_frame(captured_at: datetime, first_bytes: bytes = b"") -> bytes:
    pixels = bytearray(FRAME_WIDTH * FRAME_HEIGHT)
    pixels[: len(first_bytes)] = first_bytes
    header = FrameHeader("f-1", "L1", "cam", "K1", 1.0, captured_at, encoding="raw")
    return encode_frame(header, bytes(pixels))


def test_a_frame_from_the_future_is_rejected_beyond_the_allowed_skew() -> None:
    ahead = validate_message(
        FakeMessage(raw_frame(NOW + timedelta(hours=1)), 0, 0), 8 << 20, max_ahead_s=60, now=NOW
    )
    assert isinstance(ahead, Rejected) and "3600 s ahead of the worker's clock" in ahead.reason
    near = validate_message(
        FakeMessage(raw_frame(NOW + timedelta(seconds=30)), 0, 0), 8 << 20, max_ahead_s=60, now=NOW
    )
    assert isinstance(near, ValidFrame)


def test_the_worker_dead_letters_a_frame_from_the_future_with_its_settings_skew() -> None:
    messages = [FakeMessage(raw_frame(datetime.now(UTC) + timedelta(days=1)), 0, 5), *good_messages(1)]
    worker, _journal, parts = make_worker(messages)
    assert worker.settings.max_capture_ahead_s == 60.0  # the default, from steelcore/settings.py
    worker.run_once()
    assert [r.message.offset() for r in parts["dead_letters"].sent] == [5]
    assert "ahead of the worker's clock" in parts["dead_letters"].sent[0].reason
    assert parts["consumer"].commits[-1][(TOPIC, 0)] == 6


def good_messages(n: int) -> list[FakeMessage]:
    return [FakeMessage(frame_value(i), 0, i) for i in range(n)]


# --- the stored image's encoding is the header's -----------------------------------------------------


def test_a_raw_frame_starting_with_jpeg_magic_is_stored_as_raw() -> None:
    value = raw_frame(NOW, first_bytes=b"\xff\xd8\xff\xe0")
    frame = validate_message(FakeMessage(value, 0, 0), 8 << 20)
    assert isinstance(frame, ValidFrame)
    mask = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8)
    mask[0:10, 0:30] = 1
    from steelcore import rle

    result = EnsembleResult(
        np.array([[0.9, 0, 0, 0]], np.float32), np.array([[300, 0, 0, 0]]), [[rle.encode(mask), "", "", ""]]
    )
    [record], _, rejects = records_of([frame], result, NOW)
    assert not rejects and record.keeps_image
    assert _image_row(record)["encoding"] == "raw"


# --- dead letters that cannot be refused forever ---------------------------------------------------


class UnreadableHeaders(FakeMessage):
    """confluent-kafka raises while decoding a header key that is not UTF-8."""

    def headers(self) -> list[tuple[str, bytes]]:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


class Broker:
    """A producer in front of a broker that refuses messages over ``limit`` bytes (value + headers),
    either in the delivery report (as a broker does) or from produce() (the producer's own limit)."""

    def __init__(self, limit: int, *, local: bool = False, other_error: KafkaError | None = None) -> None:
        self.limit, self.local, self.other_error = limit, local, other_error
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        self._reports: list[Callable[[], None]] = []

    def produce(
        self, topic: str, *, value: bytes, key: bytes | None, headers: list, on_delivery: Callable
    ) -> None:
        size = len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if self.other_error is not None:
            self._reports.append(lambda: on_delivery(self.other_error, None))
        elif size > self.limit:
            self.refused += 1
            if self.local:
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            self._reports.append(lambda: on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None))
        else:
            self.accepted.append({"value": value, "key": key, "headers": dict(headers)})
            self._reports.append(lambda: on_delivery(None, None))

    def flush(self, timeout: float) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            report()
        return 0


def letters(broker: Broker, max_value_bytes: int = 8 << 20) -> DeadLetterProducer:
    return DeadLetterProducer(broker, "dlq", "w1", 5.0, max_value_bytes)


@pytest.mark.parametrize("local", [False, True], ids=["broker-refuses", "producer-refuses"])
def test_a_dead_letter_refused_as_too_large_is_sent_cut(local: bool) -> None:
    # The original fitted under Kafka's default message.max.bytes; its dead-letter headers do not.
    limit = 1_048_588
    original = FakeMessage(b"v" * (limit - 100), 0, 9)
    broker = Broker(limit, local=local)
    assert letters(broker).send([Rejected(original, "bad magic")]) == []
    [letter] = broker.accepted
    assert broker.refused == 1
    assert len(letter["value"]) == FALLBACK_VALUE_BYTES
    assert letter["headers"][DLQ_HEADER_PREFIX + "reason"] == b"bad magic"
    assert letter["headers"][DLQ_HEADER_PREFIX + "original_bytes"] == str(limit - 100).encode()
    assert b"too large" in letter["headers"][DLQ_HEADER_PREFIX + "cut"]
    assert letter["headers"]["frame_id"] == b"x"  # the original headers still travel


def test_a_dead_letter_still_too_large_goes_as_headers_only() -> None:
    broker = Broker(2000)  # a broker that takes almost nothing
    big = FakeMessage(b"v" * 5000, 1, 3, key=b"k" * 3000)
    good = FakeMessage(b"small", 1, 4)
    assert letters(broker).send([Rejected(big, "bad magic"), Rejected(good, "bad magic")]) == []
    assert broker.refused == 2  # the whole letter, then the cut one
    by_offset = {int(a["headers"][DLQ_HEADER_PREFIX + "offset"]): a for a in broker.accepted}
    assert by_offset[3]["value"] == b"" and by_offset[3]["key"] is None
    assert by_offset[3]["headers"][DLQ_HEADER_PREFIX + "original_bytes"] == b"5000"
    assert by_offset[4]["value"] == b"small" and DLQ_HEADER_PREFIX + "cut" not in by_offset[4]["headers"]


def test_a_dead_letter_not_delivered_for_another_reason_stays_an_outage() -> None:
    broker = Broker(10**9, other_error=KafkaError(KafkaError._MSG_TIMED_OUT))
    rejects = [Rejected(FakeMessage(b"x", 0, 1), "bad magic")]
    assert letters(broker).send(rejects) == rejects


def test_a_reject_whose_headers_cannot_be_read_is_still_dead_lettered() -> None:
    broker = Broker(10**9)
    assert letters(broker).send([Rejected(UnreadableHeaders(b"junk", 0, 1), "bad magic")]) == []
    [letter] = broker.accepted
    assert b"UnicodeDecodeError" in letter["headers"][DLQ_HEADER_PREFIX + "headers_dropped"]
    assert letter["headers"][DLQ_HEADER_PREFIX + "reason"] == b"bad magic"


def test_the_worker_commits_a_batch_of_poison_with_a_refusing_broker() -> None:
    """Every poison frame and a message with unreadable headers, mixed with good frames, through a
    worker whose dead-letter broker refuses anything near 1 MB: all committed in one pass."""
    poison = [FakeMessage(value, 1, k) for k, (value, _) in enumerate(POISON.values())]
    poison.append(UnreadableHeaders(b"\x00" * 1_048_400, 1, len(poison)))
    worker, _journal, parts = make_worker([*good_messages(3), *poison])
    broker = Broker(1_048_588)
    worker.dead_letters = letters(broker)
    while parts["consumer"].pending:
        worker.run_once()
    assert len(parts["store"].rows) == 3
    assert len(broker.accepted) == len(poison) and broker.refused == 1
    assert parts["consumer"].commits[-1] == {(TOPIC, 1): len(poison)}
    assert worker.metrics.value("steel_worker_frames_total", {"outcome": "dead_lettered"}) == len(poison)


# --- a row the database refuses --------------------------------------------------------------------


def refusing(store: Any, bad_ids: set[str], error: type[Exception] = DataError) -> None:
    """Make ``store`` refuse, as Postgres does, any batch that holds one of ``bad_ids``."""
    write = store.write_batch

    def write_batch(batch: Sequence[Any]) -> Any:
        if any(r.frame_id in bad_ids for r in batch):
            raise error("INSERT INTO frames ...", {}, Exception("value out of range: overflow\nDETAIL: ..."))
        return write(batch)

    store.write_batch = write_batch


@pytest.mark.parametrize("error", [DataError, IntegrityError])
def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_stored(error: type[Exception]) -> None:
    messages = good_messages(4)
    worker, journal, parts = make_worker(messages)
    bad = decode_frame(messages[2].value()).header.frame_id
    refusing(parts["store"], {bad}, error)
    worker.run_once()
    assert sorted(parts["store"].rows) == sorted(
        decode_frame(m.value()).header.frame_id for k, m in enumerate(messages) if k != 2
    )
    [letter] = parts["dead_letters"].sent
    assert (
        letter.message is messages[2]
        and letter.reason == "database refused the frame: value out of range: overflow"
    )
    assert stage_order(journal) == ["infer", "store", "store", "store", "dead_letter", "alarm", "commit"]
    assert parts["consumer"].commits == [{(TOPIC, 0): 4}]
    assert bad not in {a.frame_id for a in parts["alarm_publisher"].published}  # no alarm without a row
    assert worker.metrics.value("steel_worker_frames_total", {"outcome": "stored"}) == 3
    assert worker.metrics.value("steel_worker_frames_total", {"outcome": "dead_lettered"}) == 1


def test_the_export_skips_and_reports_an_image_that_does_not_decode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from steelcore import retraining_export as export
    from steelcore.postgres.frame_images import StoredImage

    good_png = encode_image(np.full((8, 12), 90, np.uint8), "png")
    stored = {
        "good": StoredImage("good", "png", good_png, 8, 12, NOW),
        "raw-as-jpeg": StoredImage("raw-as-jpeg", "jpeg", b"\xff\xd8\xff" + bytes(93), 8, 12, NOW),
        "bad-png": StoredImage("bad-png", "png", b"\x89PNG\r\n\x1a\n broken", 8, 12, NOW),
    }
    details = [
        SimpleNamespace(frame_id=f, defects=(SimpleNamespace(defect_id=k, class_id=1, rle="1 3"),))
        for k, f in enumerate(stored)
    ]
    verdicts = {k: SimpleNamespace(verdict="confirmed") for k in range(len(details))}
    monkeypatch.setattr(export, "defect_verdicts", lambda reader: verdicts)
    monkeypatch.setattr(export, "_reviewed_frames", lambda *args: iter(details))
    monkeypatch.setattr(export, "load_frame_image", lambda reader, frame_id: stored[frame_id])
    sink = SimpleNamespace(images={}, rows=[])
    sink.add_image = sink.images.__setitem__
    sink.add_csv = sink.rows.extend
    summary = export._export(None, sink, None, None, None)  # type: ignore[arg-type]
    assert (summary.images, summary.defect_rows, summary.skipped_bad_image) == (1, 1, 2)
    assert [b.split(":")[0] for b in summary.bad_images] == ["raw-as-jpeg", "bad-png"]
    assert list(sink.images) == ["good.jpg"] and sink.rows == [("good.jpg", 1, "1 3")]
