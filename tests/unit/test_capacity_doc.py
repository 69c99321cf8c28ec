"""docs/capacity.md: its measured figures come from tracked result files, and its arithmetic holds."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "capacity.md"
RESULTS = REPO_ROOT / "docs" / "capacity"


def doc() -> str:
    return DOC.read_text()


def test_every_result_file_the_doc_names_is_tracked_and_has_a_command() -> None:
    named = set(re.findall(r"`docs/capacity/([\w.]+\.json)`", doc()))
    assert named >= {"row_bytes.json", "model.json", "postprocess.json"}
    tracked = subprocess.run(
        ["git", "ls-files", "docs/capacity"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in named:
        assert f"docs/capacity/{name}" in tracked, f"{name} is not tracked"
        assert json.loads((RESULTS / name).read_text())["results"], name
        # The section 8 command that writes it.
        assert re.search(rf"--json docs/capacity/{re.escape(name)}`", doc()), f"no command writes {name}"
    assert "bench-results/" not in doc().split("## 8. Reproduce")[1].split("(the")[0]


def test_the_row_bytes_table_is_the_result_file() -> None:
    result = json.loads((RESULTS / "row_bytes.json").read_text())["results"][0]
    per_row = result["postgres"]["per_row"]
    for table in ("frames", "defects", "alarms", "frame_images"):
        expected = f"{int(per_row[table]['total_bytes_per_row'] + 0.5):,}"  # rounded half up
        assert re.search(rf"^\| {table} \| {expected} \|", doc(), re.M), (table, expected)
    median = f"{int(result['kafka_message_bytes']['jpeg']['median']):,} B median"  # whole bytes
    assert median in doc()


def test_the_kafka_volume_headroom_is_what_the_numbers_give() -> None:
    text = doc()
    per_broker_gb = 579
    volume_gb = 2**40 / 1e9  # 1 TiB
    used = round(100 * per_broker_gb / volume_gb)
    assert "1 TiB" in text and f"579 GB is **{used} % of it, leaving {100 - used} %" in text
    assert "30 % headroom" not in text


@pytest.mark.parametrize("figure", ["about 406 GB, 76 % of the 500 GiB (537 GB)"])
def test_the_postgres_steady_state_matches_its_arithmetic(figure: str) -> None:
    # rows per day (2 % defective) x (90 + 7) days + images per day x 15 days, against 500 GiB
    frames, defects, alarms, images = 5.4e6 * 385, 115_020 * 2274, 115_020 * 0.996 * 268.5, 108_000 * 108_878
    total = (frames + defects + alarms) * 97 + images * 15
    assert round(total / 1e9) == pytest.approx(406, abs=2)
    assert round(100 * total / (500 * 2**30)) == 76
    assert figure in doc()
