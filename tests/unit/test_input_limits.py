"""Every input has a size limit, and going past it is refused with a reason (security, item 3).

Frame messages (whole message, header, identifiers, image dimensions), the worker's check
against the ensemble's input size, RLE strings and mask areas before they reach the database,
dead letters that must fit the broker, and query limits. The frame-message envelope limits
(message bytes, header length) are also in test_frame_message.py; the fault suite sends each
of them through a real worker (tests/faults/test_worker_faults.py).
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest

from steelcore import rle
from steelcore.frame_message import (
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_ID_CHARS,
    FrameHeader,
    FrameMessageError,
    decode_frame,
    encode_frame,
    encode_image,
)
from steelcore.kafka.dead_letter import DLQ_HEADER_PREFIX, DeadLetterProducer
from steelcore.postgres.defect_history import DefectFilters
from steelcore.postgres.frame_records import DefectRecord, FrameRecord, max_rle_chars
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from workers.frame_batch import Rejected, ValidFrame, validate_message

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def header(**changes: object) -> FrameHeader:
    fields = dict(frame_id="f-1", line_id="L1", camera_id="top", coil_id="K1", position_m=0.0, captured_at=T0)
    fields.update(changes)
    return FrameHeader(**fields)  # type: ignore[arg-type]


class Message:
    def __init__(self, value: bytes | None, key: bytes = b"top") -> None:
        self._value, self._key = value, key

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return self._key

    def headers(self) -> list[tuple[str, bytes]]:
        return [("origin", b"test")]

    def topic(self) -> str:
        return "frames"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7

    def error(self) -> None:
        return None


def raw(header_json: dict, image: bytes = b"img") -> bytes:
    body = json.dumps(header_json).encode()
    return struct.pack(">4sI", MAGIC, len(body)) + body + image


# --- frame messages -------------------------------------------------------------------------------


def test_a_header_longer_than_the_limit_is_refused_before_parsing() -> None:
    padded = {**header().to_json(), "frame_id": "x" * (MAX_HEADER_BYTES + 1)}
    with pytest.raises(FrameMessageError, match=f"exceeds {MAX_HEADER_BYTES} bytes"):
        decode_frame(raw(padded))


@pytest.mark.parametrize("field", ["frame_id", "line_id", "camera_id", "coil_id"])
def test_identifiers_are_limited(field: str) -> None:
    at_limit = {**header().to_json(), field: "x" * MAX_ID_CHARS}
    assert decode_frame(raw(at_limit)).header.to_json()[field] == "x" * MAX_ID_CHARS
    with pytest.raises(FrameMessageError, match=f"{field} must be a printable string of 1..{MAX_ID_CHARS}"):
        decode_frame(raw({**at_limit, field: "x" * (MAX_ID_CHARS + 1)}))


@pytest.mark.parametrize("field", ["width", "height"])
def test_image_dimensions_are_limited(field: str) -> None:
    assert decode_frame(raw({**header().to_json(), field: 16384})).header.to_json()[field] == 16384
    with pytest.raises(FrameMessageError, match=f"{field} must be an integer in 1..16384"):
        decode_frame(raw({**header().to_json(), field: 16385}))


def test_the_worker_refuses_a_message_over_its_limit_and_any_other_frame_size() -> None:
    pixels = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8)
    good = encode_frame(header(encoding="png"), encode_image(pixels, "png"))
    assert isinstance(validate_message(Message(good), max_bytes=len(good)), ValidFrame)
    over = validate_message(Message(good), max_bytes=len(good) - 1)
    assert isinstance(over, Rejected) and "exceeds the limit" in over.reason
    # The size is checked against the ensemble before any pixel is decoded: these bytes are no image.
    other = validate_message(Message(encode_frame(header(width=800), b"not decoded")), max_bytes=10**6)
    assert isinstance(other, Rejected) and "ensemble takes 1600x256" in other.reason


# --- what reaches the database -----------------------------------------------------------------------


def frame_with(defect: DefectRecord) -> FrameRecord:
    return FrameRecord(
        frame_id="f-1", line_id="L1", camera_id="top", coil_id="K1", position_m=0.0, captured_at=T0,
        received_at=T0, model_name="m", model_version="1", defects=(defect,),
    )  # fmt: skip


def worst_case_mask() -> np.ndarray:
    """Every other pixel (column-major, as RLE counts): the most runs a frame can have."""
    flat = np.zeros(FRAME_HEIGHT * FRAME_WIDTH, np.uint8)
    flat[::2] = 1
    return flat.reshape(FRAME_WIDTH, FRAME_HEIGHT).T


def test_the_longest_rle_a_frame_can_need_is_stored_and_a_longer_one_refused() -> None:
    mask = worst_case_mask()
    code = rle.encode(mask)
    assert len(code) <= max_rle_chars(FRAME_HEIGHT, FRAME_WIDTH)
    frame_with(DefectRecord(1, code, int(mask.sum()), (0, 0, FRAME_WIDTH - 1, FRAME_HEIGHT - 1), 0.9))
    too_long = code + " 1 1" * (max_rle_chars(FRAME_HEIGHT, FRAME_WIDTH) // 4)
    with pytest.raises(ValueError, match="cannot belong to a 1600x256 frame"):
        frame_with(DefectRecord(1, too_long, 10, (0, 0, 5, 5), 0.9))


def test_an_area_larger_than_the_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot belong"):
        frame_with(DefectRecord(1, "1 4", FRAME_HEIGHT * FRAME_WIDTH + 1, (0, 0, 3, 0), 0.9))


# --- what goes back to the broker -------------------------------------------------------------------


def test_a_dead_letter_is_cut_to_the_limit_and_says_how_long_it_was() -> None:
    sent: list[dict] = []

    def produce(topic: str, *, value: bytes, key: bytes, headers: list, on_delivery) -> None:
        sent.append({"value": value, "headers": dict(headers)})
        on_delivery(None, None)

    producer = SimpleNamespace(produce=produce, flush=lambda timeout: 0)
    letters = DeadLetterProducer(producer, "dlq", "w1", 5.0, max_value_bytes=1000)
    assert letters.send([Rejected(Message(b"x" * 5000), "message of 5000 bytes exceeds the limit")]) == []
    [letter] = sent
    assert len(letter["value"]) == 1000
    assert letter["headers"][DLQ_HEADER_PREFIX + "original_bytes"] == b"5000"
    assert letter["headers"]["origin"] == b"test"


# --- queries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -5])
def test_a_query_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be positive"):
        DefectFilters(limit=limit)
    from steelcore.postgres import live_reads

    with pytest.raises(ValueError, match="limit must be positive"):
        live_reads.recent_alarms(None, limit=limit)  # type: ignore[arg-type]


def test_queries_are_limited_by_default_and_the_dashboard_pages_are_bounded() -> None:
    from dashboard import history_page
    from steelcore.postgres.defect_history import DEFAULT_LIMIT

    assert DefectFilters().limit == DEFAULT_LIMIT
    # Every history page and export the dashboard can ask for has a ceiling.
    assert max(history_page.PAGE_SIZES) <= 1000
    assert history_page.EXPORT_MAX_ROWS <= 1_000_000
    assert history_page.RETRAINING_MAX_FRAMES <= 10_000


# --- decompression bombs ---------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """Just a PNG signature and an IHDR chunk: enough to declare a size, nothing to decode."""
    ihdr = struct.pack(">II5B", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\0" * 4


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_an_image_declaring_another_size_is_refused_without_decoding(
    encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import frame_batch

    def no_decoding(_frame: object) -> np.ndarray:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(frame_batch, "decode_image", no_decoding)
    if encoding == "png":
        image = png_declaring(16000, 16000)
    else:  # a real JPEG's frame header, its size changed to 16000 x 16000
        image = bytearray(encode_image(np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8), "jpeg"))
        sof = next(i for i in range(2, len(image) - 9) if image[i] == 0xFF and image[i + 1] == 0xC0)
        image[sof + 5 : sof + 9] = struct.pack(">HH", 16000, 16000)
    checked = validate_message(Message(encode_frame(header(encoding=encoding), bytes(image))), 10**6)
    assert isinstance(checked, Rejected) and "declares 16000x16000" in checked.reason


def test_declared_sizes_are_read_from_real_images() -> None:
    from workers.frame_batch import declared_size

    pixels = np.zeros((FRAME_HEIGHT, 800), np.uint8)
    assert declared_size(encode_image(pixels, "png"), "png") == (800, FRAME_HEIGHT)
    assert declared_size(encode_image(pixels, "jpeg"), "jpeg") == (800, FRAME_HEIGHT)
    assert declared_size(b"raw bytes", "raw") is None
    with pytest.raises(FrameMessageError, match="not a JPEG"):
        declared_size(b"GIF89a....", "jpeg")
