"""Frame images kept in the defect database: what is kept, how it is read back, and when it goes.

Policy (the dashboard's overlays and the retraining export depend on it):
- kept: the image of every frame with at least one defect, exactly the bytes of the Kafka message
  (JPEG as received, never re-encoded; PNG or raw pixels when a camera sends those), under the
  encoding the frame header declared;
- where: ``frame_images`` (steelcore.postgres.schema), one row per frame, written by
  steelcore.postgres.defect_writes.DefectStore in the same transaction as the frame, so a stored
  defect never lacks its image and a redelivered frame adds no second copy;
- how long: ``retention_days(settings)`` days after it was stored, then ``purge_frame_images``
  deletes it (the frame, its defects and feedback stay). A 60 KB JPEG per defective frame at
  5 defective frames/s is about 26 GB per day: size the retention to the disk.

    python -m steelcore.postgres.frame_images purge [--days N]   # the database of STEEL_POSTGRES_URL
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, delete, func, select

from steelcore import exit_codes
from steelcore.postgres.schema import frame_images, frames

if TYPE_CHECKING:
    import numpy as np

    from steelcore.settings import Settings

# Rows deleted per statement: short transactions, so a purge never holds locks for long.
PURGE_BATCH_ROWS = 5000

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class StoredImage:
    frame_id: str
    encoding: str  # one of steelcore.postgres.schema.IMAGE_ENCODINGS
    data: bytes
    height: int
    width: int
    stored_at: datetime

    def pixels(self) -> np.ndarray:
        """The image as uint8 grey levels [height, width]."""
        return decode_image_bytes(self.data, self.encoding, self.height, self.width)


def retention_days(settings: Settings | None = None) -> float:
    """Days a frame image is kept (Settings.frame_image_retention_days)."""
    from steelcore.settings import get_settings

    return float((settings or get_settings()).frame_image_retention_days)


def image_encoding(data: bytes, height: int, width: int, declared: str | None = None) -> str:
    """The encoding to store received image bytes under: "jpeg", "png" or "raw".

    With ``declared`` (the frame header's encoding, which the worker decoded the image by) that
    encoding, once the bytes are checked to be plausible for it: guessing from the content would
    call a raw frame whose first pixels happen to be FF D8 FF a JPEG. Without it, told from the
    content (JPEG or PNG magic, else exactly height x width grey bytes). Raises ValueError for bytes
    that cannot be an image of that encoding or size."""
    if not data:
        raise ValueError("frame image is empty")
    if declared is not None:
        if declared == "raw" and len(data) == height * width:
            return "raw"
        if declared == "jpeg" and data.startswith(_JPEG_MAGIC):
            return "jpeg"
        if declared == "png" and data.startswith(_PNG_MAGIC):
            return "png"
        raise ValueError(f"frame image of {len(data)} bytes is not a {declared} image of {height}x{width}")
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if len(data) == height * width:
        return "raw"
    raise ValueError(
        f"frame image of {len(data)} bytes is neither JPEG, PNG nor raw {height}x{width} grey pixels"
    )


def decode_image_bytes(data: bytes, encoding: str, height: int, width: int) -> np.ndarray:
    """Stored bytes -> uint8 [height, width]. Raises ValueError when they do not decode to that size."""
    import cv2
    import numpy as np

    if encoding == "raw":
        if len(data) != height * width:
            raise ValueError(f"raw frame image has {len(data)} bytes, expected {height}x{width}")
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width)
    if encoding not in ("jpeg", "png"):
        raise ValueError(f"unknown frame image encoding {encoding!r}")
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError(f"stored {encoding} frame image does not decode")
    if pixels.shape != (height, width):
        raise ValueError(
            f"stored frame image is {pixels.shape[0]}x{pixels.shape[1]}, expected {height}x{width}"
        )
    return pixels


def load_frame_image(engine: Engine, frame_id: str) -> StoredImage | None:
    """The stored image of ``frame_id``; None when none was kept or it was purged."""
    stmt = (
        select(
            frame_images.c.frame_id,
            frame_images.c.encoding,
            frame_images.c.image,
            frames.c.height,
            frames.c.width,
            frame_images.c.stored_at,
        )
        .join(frames, frames.c.frame_id == frame_images.c.frame_id)
        .where(frame_images.c.frame_id == frame_id)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    return StoredImage(row.frame_id, row.encoding, bytes(row.image), row.height, row.width, row.stored_at)


def frames_with_images(engine: Engine, frame_ids: Sequence[str]) -> set[str]:
    """Which of ``frame_ids`` still have a stored image (one indexed lookup, no bytes read)."""
    if not frame_ids:
        return set()
    stmt = select(frame_images.c.frame_id).where(frame_images.c.frame_id.in_(list(frame_ids)))
    with engine.connect() as conn:
        return set(conn.execute(stmt).scalars())


def purge_frame_images(
    engine: Engine, *, older_than: timedelta | None = None, now: datetime | None = None
) -> int:
    """Delete images stored before ``now - older_than`` (default: the retention period), in
    batches; returns how many were deleted. Needs DELETE on frame_images (the owner role)."""
    keep = older_than if older_than is not None else timedelta(days=retention_days())
    if keep < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {keep}")
    when = now or datetime.now(UTC)
    if when.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {when.isoformat()}")
    cutoff = when - keep
    deleted = 0
    while True:
        batch = (
            select(frame_images.c.frame_id)
            .where(frame_images.c.stored_at < cutoff)
            .order_by(frame_images.c.stored_at)
            .limit(PURGE_BATCH_ROWS)
            .scalar_subquery()
        )
        with engine.begin() as conn:
            n = conn.execute(delete(frame_images).where(frame_images.c.frame_id.in_(batch))).rowcount
        deleted += n
        if n < PURGE_BATCH_ROWS:
            return deleted


def stored_image_bytes(engine: Engine) -> int:
    """Disk used by stored frame images, indexes and TOAST included (catalog lookup, no scan)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.pg_total_relation_size(frame_images.name))).scalar_one())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steelcore.postgres.frame_images", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    purge = sub.add_parser("purge", help="delete frame images older than the retention period")
    purge.add_argument(
        "url",
        nargs="?",
        help="URL without a password (default: STEEL_POSTGRES_URL, a role that may DELETE)",
    )
    purge.add_argument("--days", type=float, default=None, help="retention in days (default: settings)")
    args = parser.parse_args(argv)
    from steelcore.postgres.engine import command_database_url, create_db_engine

    url = command_database_url(parser.prog, args.url)
    if isinstance(url, int):
        return url
    days = retention_days() if args.days is None else args.days
    if days < 0:
        print(f"--days must be >= 0, got {days}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    engine = create_db_engine(url)
    try:
        n = purge_frame_images(engine, older_than=timedelta(days=days))
    finally:
        engine.dispose()
    print(f"deleted {n} frame image(s) stored more than {days:g} days ago")
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
