"""scripts/measure_row_bytes.py on the embedded Postgres and Redis: what it reports is what was stored."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

from steelcore.paths import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture()
def script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/measure_row_bytes.py as a module (scripts/ is not a package)."""
    path = REPO_ROOT / "scripts" / "measure_row_bytes.py"
    spec = importlib.util.spec_from_file_location("measure_row_bytes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up in sys.modules while being defined.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_reported_sizes_match_what_was_stored(
    script: ModuleType, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "row_bytes.json"
    argv = ["--frames", "64", "--defective-share", "1.0", "--alarm-entries", "40"]
    argv += ["--postgres-url", postgres_url, "--redis-url", redis_url, "--json", str(out)]
    assert script.main(argv) == 0
    result = json.loads(out.read_text())["results"][0]

    # Recompute the inputs independently of the script's bookkeeping.
    from steelcore.frame_message import encode_image

    frames = script.load_frames(script.SEVERSTAL_SAMPLE_DIR)
    jpeg_sizes = [len(encode_image(f, "jpeg")) for f in frames]
    per_row = result["postgres"]["per_row"]
    # Every seeded frame is defective; the second half adds 32 frames and 32 images.
    assert per_row["frames"]["rows_added"] == 32
    # frames is partitioned: its bytes live in the partitions, and a frame row is at least its tuple.
    assert per_row["frames"]["total_bytes_per_row"] >= result["postgres"]["columns"]["frames_tuple"]
    assert per_row["frame_images"]["rows_added"] == 32
    # JPEG does not compress, so an image row costs at least its bytes.
    assert per_row["frame_images"]["total_bytes_per_row"] >= min(jpeg_sizes)
    assert result["postgres"]["columns"]["frame_images_image_bytes"] == pytest.approx(
        statistics.fmean(jpeg_sizes), rel=0.2
    )
    assert per_row["defects"]["rows_added"] >= 32
    # A Kafka message is the image plus a small JSON header.
    jpeg = result["kafka_message_bytes"]["jpeg"]
    assert 0 < jpeg["median"] - statistics.median(jpeg_sizes) < 1000

    redis = result["redis"]
    assert redis["entries"] == 40
    assert redis["bytes_at_maxlen"] == pytest.approx(redis["bytes_per_entry"] * redis["maxlen"], rel=1e-3)
    # An entry holds at least its field values (frame id, coil id, timestamps ...).
    assert redis["bytes_per_entry"] > 100
