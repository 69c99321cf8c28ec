"""The frame message contract: round trip, and a clear reason for every bad message."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from steelcore.frame_message import (
    MAGIC,
    SCHEMA_VERSION,
    FrameHeader,
    FrameMessageError,
    decode_frame,
    decode_image,
    encode_frame,
    encode_image,
)


def _header(**overrides: object) -> FrameHeader:
    base = FrameHeader(
        frame_id="L1-C1-000042",
        line_id="L1",
        camera_id="C1",
        coil_id="K0001",
        position_m=12.5,
        captured_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        encoding="png",
        width=64,
        height=32,
    )
    return replace(base, **overrides)


def _pixels(h: int = 32, w: int = 64) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) % 251).astype(np.uint8)


def _raw_message(header: dict, image: bytes = b"img") -> bytes:
    body = json.dumps(header).encode()
    return struct.pack(">4sI", MAGIC, len(body)) + body + image


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_lossless_round_trip(encoding: str) -> None:
    header = _header(encoding=encoding)
    pixels = _pixels()
    frame = decode_frame(encode_frame(header, encode_image(pixels, encoding)))
    assert frame.header == header
    np.testing.assert_array_equal(decode_image(frame), pixels)


def test_jpeg_round_trip_is_close() -> None:
    pixels = _pixels()
    frame = decode_frame(encode_frame(_header(encoding="jpeg"), encode_image(pixels, "jpeg", quality=95)))
    decoded = decode_image(frame)
    assert decoded.shape == pixels.shape
    assert np.abs(decoded.astype(int) - pixels).mean() < 8


def test_time_is_normalised_to_utc() -> None:
    local = datetime(2026, 11, 26, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    frame = decode_frame(encode_frame(_header(captured_at=local), b"x"))
    assert frame.header.captured_at == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _valid_json() -> dict:
    return _header().to_json()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.pop("coil_id"), "misses field(s): coil_id"),
        (lambda h: h.update(extra=1), "unknown field(s): extra"),
        (lambda h: h.update(schema_version=SCHEMA_VERSION + 1), "unsupported schema_version"),
        (lambda h: h.update(frame_id=""), "frame_id must be"),
        (lambda h: h.update(position_m="far"), "position_m must be a finite number"),
        (lambda h: h.update(position_m=-1), "position_m must be >= 0"),
        (lambda h: h.update(captured_at="yesterday"), "not an ISO-8601 time"),
        (lambda h: h.update(captured_at="2026-11-26T12:00:00"), "must carry a time zone"),
        (lambda h: h.update(encoding="bmp"), "encoding must be one of"),
        (lambda h: h.update(width=0), "width must be an integer"),
        (lambda h: h.update(height=True), "height must be an integer"),
    ],
)
def test_bad_header_fields_are_named(mutate, reason: str) -> None:
    header = _valid_json()
    mutate(header)
    with pytest.raises(FrameMessageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_frame(_raw_message(header))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"ab", "shorter than the frame prefix"),
        (b"JUNK" + b"\x00" * 40, "bad magic"),
        (struct.pack(">4sI", MAGIC, 100) + b"{}", "truncated inside the header"),
        (struct.pack(">4sI", MAGIC, 10**6) + b"{}", "header length"),
        (struct.pack(">4sI", MAGIC, 3) + b"{x}", "not valid JSON"),
        (struct.pack(">4sI", MAGIC, 2) + b"[]" + b"img", "not a JSON object"),
    ],
)
def test_bad_envelopes_are_named(value: bytes | None, reason: str) -> None:
    with pytest.raises(FrameMessageError, match=reason):
        decode_frame(value)


def test_missing_image_and_size_limit() -> None:
    with pytest.raises(FrameMessageError, match="no image bytes"):
        decode_frame(_raw_message(_valid_json(), image=b""))
    message = encode_frame(_header(), b"x" * 1000)
    with pytest.raises(FrameMessageError, match="exceeds the limit"):
        decode_frame(message, max_bytes=500)
    assert decode_frame(message, max_bytes=len(message)).image == b"x" * 1000


def test_image_that_disagrees_with_header() -> None:
    wrong_size = encode_image(_pixels(16, 16), "png")
    with pytest.raises(FrameMessageError, match="header says 64x32"):
        decode_image(decode_frame(encode_frame(_header(), wrong_size)))
    with pytest.raises(FrameMessageError, match="not a decodable jpeg"):
        decode_image(decode_frame(encode_frame(_header(encoding="jpeg"), b"\xff\xd8 truncated")))
    with pytest.raises(FrameMessageError, match="raw image has 5 bytes"):
        decode_image(decode_frame(encode_frame(_header(encoding="raw"), b"12345")))


def test_producer_cannot_encode_invalid_header() -> None:
    with pytest.raises(FrameMessageError, match="position_m"):
        encode_frame(_header(position_m=float("nan")), b"x")
