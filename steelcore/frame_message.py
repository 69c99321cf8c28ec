"""The frame message: what a camera publishes to Kafka and a worker consumes.

Wire format (version 1), one Kafka message value:

    b"STF1" | uint32 big-endian header length | UTF-8 JSON header | image bytes

The header travels with the image so a frame is self-describing even after it has
been dead-lettered or replayed; the magic and explicit version let a worker reject
a message from another producer, or from a newer schema, with a clear reason.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import cv2
import numpy as np

from steelcore.errors import SteelError
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

SCHEMA_VERSION = 1
MAGIC = b"STF1"
_PREFIX = struct.Struct(">4sI")
MAX_HEADER_BYTES = 4096
MAX_ID_CHARS = 128
# Far beyond any coil (a few km of strip) and well inside what the REAL column of the defect
# database holds (about 3.4e38): a larger position is a broken camera, and storing it would fail.
MAX_POSITION_M = 1.0e7
# Positions below this are stored as 0: a REAL column cannot hold 1e-300 (the insert fails), and a
# micrometre is a thousandth of a pixel on the strip.
MIN_NONZERO_POSITION_M = 1.0e-6
Encoding = Literal["jpeg", "png", "raw"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)


class FrameMessageError(SteelError, ValueError):
    """A frame message that cannot be used; ``reason`` goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FrameIdentity:
    """Where and when a frame was taken: the fields every record about a frame carries."""

    frame_id: str
    line_id: str
    camera_id: str
    coil_id: str
    position_m: float
    captured_at: datetime

    def identity_fields(self) -> dict[str, Any]:
        """The six fields by name, to build another record about the same frame from this one."""
        return {f.name: getattr(self, f.name) for f in fields(FrameIdentity)}


@dataclass(frozen=True)
class FrameHeader(FrameIdentity):
    """The identity plus how the image is encoded; the JSON header of a frame message."""

    encoding: Encoding = "jpeg"
    width: int = FRAME_WIDTH
    height: int = FRAME_HEIGHT
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["captured_at"] = self.captured_at.astimezone(UTC).isoformat()
        return data


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    image: bytes = field(repr=False)


def encode_frame(header: FrameHeader, image: bytes) -> bytes:
    """Serialise one frame; validates the header so a producer cannot publish a bad one."""
    _validate_header(header.to_json())
    body = json.dumps(header.to_json(), separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, len(body)) + body + image


def decode_frame(value: bytes | None, max_bytes: int | None = None) -> Frame:
    """Parse and validate a Kafka message value. Raises FrameMessageError with the reason."""
    if value is None:
        raise FrameMessageError("empty message (tombstone)")
    if max_bytes is not None and len(value) > max_bytes:
        raise FrameMessageError(f"message of {len(value)} bytes exceeds the limit of {max_bytes}")
    if len(value) < _PREFIX.size:
        raise FrameMessageError(f"message of {len(value)} bytes is shorter than the frame prefix")
    magic, header_len = _PREFIX.unpack_from(value)
    if magic != MAGIC:
        raise FrameMessageError(f"bad magic {magic!r}: not a steel frame message")
    if header_len > MAX_HEADER_BYTES:
        raise FrameMessageError(f"header length {header_len} exceeds {MAX_HEADER_BYTES} bytes")
    end = _PREFIX.size + header_len
    if len(value) < end:
        raise FrameMessageError("message truncated inside the header")
    try:
        raw = json.loads(value[_PREFIX.size : end])
    except RecursionError as exc:
        # Nesting about 1,000 deep fits in the header cap and exhausts the parser's recursion.
        raise FrameMessageError("header is nested too deeply to be a frame header") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and int-length limits alike
        raise FrameMessageError(f"header is not valid JSON: {exc}") from exc
    header = _validate_header(raw)
    image = value[end:]
    if not image:
        raise FrameMessageError("message has no image bytes")
    return Frame(header=header, image=bytes(image))


def _validate_header(raw: object) -> FrameHeader:
    if not isinstance(raw, dict):
        raise FrameMessageError("header is not a JSON object")
    version = raw.get("schema_version")
    # type() and not ==: True == 1 and 1.0 == 1 in Python, and neither is a schema version.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise FrameMessageError(
            f"unsupported schema_version {_short(version)} (this build reads {SCHEMA_VERSION})"
        )
    expected = set(FrameHeader.__dataclass_fields__)
    missing = sorted(expected - raw.keys())
    if missing:
        raise FrameMessageError(f"header misses field(s): {', '.join(missing)}")
    unknown = sorted(raw.keys() - expected)
    if unknown:
        raise FrameMessageError(f"header has unknown field(s): {', '.join(unknown)}")
    for name in ("frame_id", "line_id", "camera_id", "coil_id"):
        value = raw[name]
        if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or not value.isprintable():
            raise FrameMessageError(f"{name} must be a printable string of 1..{MAX_ID_CHARS} characters")
    position = _parse_position(raw["position_m"])
    captured_at = _parse_time(raw["captured_at"])
    if raw["encoding"] not in ENCODINGS:
        raise FrameMessageError(
            f"encoding must be one of {', '.join(ENCODINGS)}, got {_short(raw['encoding'])}"
        )
    for name in ("width", "height"):
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
            raise FrameMessageError(f"{name} must be an integer in 1..16384, got {_short(value)}")
    return FrameHeader(
        frame_id=raw["frame_id"],
        line_id=raw["line_id"],
        camera_id=raw["camera_id"],
        coil_id=raw["coil_id"],
        position_m=position,
        captured_at=captured_at,
        encoding=raw["encoding"],
        width=raw["width"],
        height=raw["height"],
        schema_version=version,
    )


def _parse_position(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FrameMessageError(f"position_m must be a finite number, got {_short(value)}")
    # Compared before any float conversion: a 400-digit integer overflows float() and isfinite().
    if isinstance(value, float) and not math.isfinite(value):
        raise FrameMessageError(f"position_m must be a finite number, got {value!r}")
    if value < 0:
        raise FrameMessageError(f"position_m must be >= 0, got {_short(value)}")
    if value > MAX_POSITION_M:
        raise FrameMessageError(f"position_m must be <= {MAX_POSITION_M:g}, got {_short(value)}")
    position = float(value)
    return position if position >= MIN_NONZERO_POSITION_M else 0.0


def _short(value: object, limit: int = 60) -> str:
    """repr() for a reason, cut short: a reason must stay readable whatever the header held, and
    making it must not fail (repr of a deeply nested list can exhaust the recursion limit)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return "an integer too large to show"
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"a {type(value).__name__} too deep to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_time(value: object) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise FrameMessageError(f"captured_at is not an ISO-8601 time: {_short(value)}") from exc
    else:
        raise FrameMessageError(f"captured_at must be an ISO-8601 string, got {_short(value)}")
    if parsed.tzinfo is None:
        raise FrameMessageError("captured_at must carry a time zone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise FrameMessageError(f"captured_at {_short(value)} is outside the years 1..9999 in UTC") from exc


def encode_image(pixels: np.ndarray, encoding: Encoding = "jpeg", quality: int = 90) -> bytes:
    """Compress an 8-bit grayscale frame for the wire."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 frame, got {pixels.dtype} {pixels.shape}")
    if encoding == "raw":
        return np.ascontiguousarray(pixels).tobytes()
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if encoding == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, pixels, params)
    if not ok:
        raise ValueError(f"could not encode frame as {encoding}")
    return buf.tobytes()


def decode_image(frame: Frame) -> np.ndarray:
    """The frame's pixels as uint8 [height, width]; FrameMessageError if they do not match the header."""
    h = frame.header
    if h.encoding == "raw":
        if len(frame.image) != h.width * h.height:
            raise FrameMessageError(
                f"raw image has {len(frame.image)} bytes, header says {h.width}x{h.height}"
            )
        return np.frombuffer(frame.image, dtype=np.uint8).reshape(h.height, h.width)
    pixels = cv2.imdecode(np.frombuffer(frame.image, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise FrameMessageError(f"image bytes are not a decodable {h.encoding}")
    if pixels.shape != (h.height, h.width):
        raise FrameMessageError(
            f"decoded image is {pixels.shape[1]}x{pixels.shape[0]}, header says {h.width}x{h.height}"
        )
    return pixels
