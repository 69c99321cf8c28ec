"""The retraining download is built into a file, one image at a time, never as an archive in memory."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from steelcore import retraining_export
from steelcore.postgres.frame_reads import DefectMark, FrameDetail
from steelcore.postgres.verdicts import DefectVerdict
from steelcore.retraining_export import CSV_NAME, IMAGES_DIR, retraining_zip_file, write_retraining_zip

NOW = datetime(2024, 5, 1, tzinfo=UTC)
IMAGE_BYTES = 1 << 20  # 1 MiB per "image"
FRAMES = 24  # a 24 MiB archive


@pytest.fixture
def fake_frames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """FRAMES reviewed frames of IMAGE_BYTES each, without a database: the export's sources stubbed."""
    ids = [f"F{i:03d}" for i in range(FRAMES)]
    verdicts = {i: DefectVerdict(i, "confirmed", "ana", NOW, "defect") for i in range(FRAMES)}

    def frames(reader, verdicts, since, until):
        for i, frame_id in enumerate(ids):
            mark = DefectMark(i, frame_id, 1, "1 10", 10, (0, 0, 1, 10), 0.9, 0.5)
            yield FrameDetail(frame_id, "L1", "top", "C1", 0.0, NOW, 256, 1600, "m", "1", (mark,))

    monkeypatch.setattr(retraining_export, "defect_verdicts", lambda reader: verdicts)
    monkeypatch.setattr(retraining_export, "_reviewed_frames", frames)
    monkeypatch.setattr(retraining_export, "load_frame_image", lambda reader, frame_id: frame_id)
    # A fresh bytes object per image, as decoding a stored image gives: nothing cached across images.
    monkeypatch.setattr(retraining_export, "_jpeg_bytes", lambda stored: os.urandom(IMAGE_BYTES))
    return ids


def test_the_archive_is_written_into_the_given_file(fake_frames: list[str], tmp_path: Path) -> None:
    path = tmp_path / "out.zip"
    with open(path, "wb") as out:
        summary = write_retraining_zip(None, out)  # type: ignore[arg-type]
    assert summary.images == FRAMES and summary.defect_rows == FRAMES
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert CSV_NAME in names
        assert sorted(n for n in names if n.startswith(f"{IMAGES_DIR}/")) == [
            f"{IMAGES_DIR}/{f}.jpg" for f in fake_frames
        ]
        assert archive.testzip() is None


def test_building_the_download_never_holds_the_archive_in_memory(
    fake_frames: list[str], tmp_path: Path
) -> None:
    tracemalloc.start()
    try:
        archive, summary = retraining_zip_file(None, tmp_dir=tmp_path)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with archive:
        # An open file, not bytes; Streamlit's download_button reads a BufferedReader from its start.
        assert isinstance(archive, io.BufferedReader) and archive.tell() == 0
        size = os.fstat(archive.fileno()).st_size
        assert size > FRAMES * IMAGE_BYTES
        # Only a few images were ever in memory at once (the old in-memory zip peaked at twice the archive).
        assert peak < 4 * IMAGE_BYTES, f"peak {peak / 2**20:.1f} MiB building a {size / 2**20:.0f} MiB zip"
        assert list(tmp_path.iterdir()) == []  # no name left on disk: closing the file frees it
        with zipfile.ZipFile(archive) as zf:
            assert len(zf.namelist()) == FRAMES + 1 and zf.testzip() is None
    assert summary.images == FRAMES
