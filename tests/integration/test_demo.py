"""`steel demo --frames N` as a process: its own embedded stack (Tansu, Postgres, Redis, Triton serving
settings.triton_repository) on random ports, two cameras, two workers, the actuator.

The summary is checked against what the demo left in the database (the stack is kept for that):
every frame is stored, and the live mean Dice equals the Dice recomputed here from the stored
defects and the synthetic camera's own masks (not the truth topic the demo read).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text
from steel_cli import own_stack_env, steel

from producers.frame_sources import frame_run_start_ms
from producers.synthetic_camera import SyntheticCamera
from steelcore import rle
from steelcore.settings import Settings
from training.metrics import dice_scores

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAMES = 12
KEYS = {
    "produced", "stored", "dead_lettered", "frames_per_s", "defects", "defects_total", "alarms",
    "actuator_acks", "camera_to_alarm_ms", "camera_to_actuator_ms", "mean_dice", "dice_frames",
    "broker_rss_mb", "ok",
}  # fmt: skip


def test_demo_frames_stores_every_frame_and_reports_its_dice(fresh_run_dir: Path, tmp_path: Path) -> None:
    env = own_stack_env(fresh_run_dir)
    try:
        done = steel(
            env,
            "demo",
            "--frames",
            str(FRAMES),
            "--no-dashboard",
            "--keep-stack",
            "--fps",
            "2",
            timeout_s=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert KEYS <= set(summary)
        assert summary["produced"] == summary["stored"] == FRAMES and summary["ok"] is True
        assert summary["dead_lettered"] == 0 and summary["frames_per_s"] > 0
        assert summary["dice_frames"] == FRAMES and 0.0 <= summary["mean_dice"] <= 1.0
        assert summary["actuator_acks"] == summary["alarms"]
        assert summary["camera_to_alarm_ms"]["count"] == summary["alarms"]
        logs = {p.name for p in (fresh_run_dir / "logs").iterdir()}
        assert {"worker-1.log", "worker-2.log", "camera-1.log", "camera-2.log", "actuator.log"} <= logs

        settings = Settings(run_dir=fresh_run_dir, postgres_url=None)
        assert_dice_matches(settings, summary)
    finally:
        steel(env, "down", timeout_s=120)


def assert_dice_matches(settings: Settings, summary: dict) -> None:
    """Recompute the Kaggle mean Dice from the database and the synthetic camera's masks."""
    from steelcore.postgres.engine import create_db_engine
    from steelcore.service_urls import postgres_url

    engine = create_db_engine(postgres_url(settings))
    try:
        with engine.connect() as conn:
            frames = [r[0] for r in conn.execute(text("SELECT frame_id FROM frames WHERE line_id = 'L1'"))]
            defects = {
                (r.frame_id, r.class_id): r.rle
                for r in conn.execute(
                    text("SELECT frame_id, class_id, rle FROM defects WHERE line_id = 'L1'")
                )
            }
    finally:
        engine.dispose()
    assert len(frames) == FRAMES
    scores = []
    for fid in frames:
        camera, seq = fid.split("-")[1], int(fid.rsplit("-", 1)[1])
        assert frame_run_start_ms(fid) > 0
        truth = SyntheticCamera(seed=int(camera.removeprefix("cam")) - 1).frame(seq).masks  # --seed 0
        predicted = rle.decode_stack([defects.get((fid, c), "") for c in (1, 2, 3, 4)])
        scores.append(dice_scores(predicted[None], truth[None])[0])
    assert summary["mean_dice"] == pytest.approx(float(np.mean(scores)), abs=1e-9)
    assert summary["defects_total"] == len(defects)
