"""`steel demo --scene lifecycle` as a process on its own embedded stack: drift alarm, operator
verdicts, the shipped `synthetic` bundle as the candidate, a shadow run and a promotion.

What the scene left (the stack is kept for that) is checked against independent sources: each
verdict against the synthetic camera's own masks (not the truth topic the scene read), the roles and
audit against the scene's steps, the versions stored with the frames, and the drift alarm on its
Redis stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from steel_cli import own_stack_env, steel

from producers.synthetic_camera import SyntheticCamera
from steelcore.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lifecycle_scene_runs_the_loop_and_leaves_its_trace(fresh_run_dir: Path) -> None:
    env = own_stack_env(fresh_run_dir, STEEL_PROMOTE_GATE_MIN_VERDICTS="5")
    try:
        done = steel(
            env,
            "demo",
            "--scene",
            "lifecycle",
            "--candidate",
            "synthetic",
            "--no-dashboard",
            "--no-screenshots",
            "--keep-stack",
            "--fps",
            "2",
            "--drift-after",
            "10",
            "--review-frames",
            "10",
            "--step-timeout-s",
            "300",
            timeout_s=1200,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        scene = json.loads((fresh_run_dir / "lifecycle-scene.json").read_text())
        assert all("result" in s for s in scene["steps"]), scene["steps"]
        assert "[scene 6] promotion" in done.stdout
        summary = json.loads((fresh_run_dir / "demo-summary.json").read_text())
        assert summary["ok"] is True and summary["stored"] == summary["produced"] > 0
        check_trace(Settings(run_dir=fresh_run_dir, postgres_url=None, redis_url=None), scene)
    finally:
        steel(env, "down", timeout_s=120)


def check_trace(settings: Settings, scene: dict) -> None:
    import redis

    from steelcore.postgres.engine import create_db_engine
    from steelcore.service_urls import postgres_url, redis_url

    engine = create_db_engine(postgres_url(settings))
    try:
        with engine.connect() as conn:
            roles = {r.role: r.version for r in conn.execute(text("SELECT role, version FROM model_roles"))}
            bundles = dict(conn.execute(text("SELECT version, bundle FROM model_versions")).all())
            audit = [
                (r.action, r.version, r.actor, r.forced)
                for r in conn.execute(
                    text("SELECT action, version, actor, forced FROM model_audit ORDER BY audit_id")
                )
            ]
            versions = {r[0] for r in conn.execute(text("SELECT DISTINCT model_version FROM frames"))}
            shadowed = conn.execute(
                text("SELECT count(*) FROM shadow_results WHERE version = 2")
            ).scalar_one()
            verdicts = conn.execute(
                text(
                    "SELECT d.frame_id, d.class_id, fb.verdict, fb.operator FROM feedback fb"
                    " JOIN defects d ON d.defect_id = fb.defect_id"
                )
            ).all()
    finally:
        engine.dispose()
    assert bundles == {1: "default", 2: "synthetic"}
    assert ("shadow", 2, "demo-operator", False) in audit
    (forced,) = [f for action, version, _, f in audit if action == "promote" and version == 2]
    steps = [s["step"] for s in scene["steps"]]
    if forced:  # the gate refused: promoted with --force, then rolled back
        assert steps == [1, 2, 3, 4, 5, 6, 7]
        assert roles == {"production": 1} and audit[-1] == ("rollback", 1, "demo-operator", False)
    else:
        assert steps == [1, 2, 3, 4, 5, 6]
        assert roles == {"production": 2}  # promoted; the shadow role is cleared
    assert {"1", "2"} <= versions  # frames judged before and after the switch
    assert shadowed > 0

    # Each simulated verdict says what the synthetic camera really drew (--seed 0: camera k = seed k-1).
    assert len(verdicts) == sum(scene["verdicts"].values()) > 0
    for frame_id, class_id, verdict, operator in verdicts:
        camera, seq = frame_id.split("-")[1], int(frame_id.rsplit("-", 1)[1])
        truth = SyntheticCamera(seed=int(camera.removeprefix("cam")) - 1).frame(seq).masks
        assert verdict == ("confirmed" if truth[class_id - 1].any() else "false"), frame_id
        assert operator == "demo-operator"

    client = redis.Redis.from_url(redis_url(settings), decode_responses=True)
    try:
        entries = client.xrange(settings.inspection_alarm_stream)
    finally:
        client.close()
    raised = [f for _, f in entries if f.get("state") == "raised"]
    assert [f["camera"] for f in raised] == ["L1/cam2"]  # the dimmed camera, once
