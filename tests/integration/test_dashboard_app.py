"""Each dashboard page rendered by Streamlit's AppTest on seeded data in the embedded Postgres.

AppTest runs the real app script in-process (st.navigation, fragments, widgets); a fragment's
``run_every`` does not tick here, each ``run()`` renders the page once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dashboard_seed import RECENT_COIL
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from steelcore.postgres import schema
from steelcore.postgres.frame_records import FrameRecord
from steelcore.severstal import CLASS_NAMES

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TIMEOUT_S = 60.0  # two shared cores: a page's first run imports pandas and altair


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _feedback_rows(owner: Engine) -> list:
    with owner.connect() as conn:
        return list(conn.execute(select(schema.feedback).order_by(schema.feedback.c.feedback_id)))


def test_live_page_shows_rates_alarms_frames_and_the_coil(
    dashboard_env: None, seeded_records: list[FrameRecord]
) -> None:
    at = _app().run()
    assert not at.exception, at.exception
    recent = [r for r in seeded_records if r.line_id == "L1"]  # all inside the default 300 s window
    assert _metric(at, "Frames/s") == f"{len(recent) / 300:.2f}"
    assert _metric(at, "Defects in window") == str(sum(len(r.defects) for r in recent))
    newest = max((a.raised_at, r.frame_id) for r in recent for a in r.alarms)
    assert any(newest[1] in md.value for md in at.markdown), "newest alarm missing from the feed"
    assert len(at.get("image")) == 3  # the latest defective frames, masks drawn over them
    assert any(s.value == f"Current coil {RECENT_COIL}" for s in at.subheader)
    # The seeded frames are minutes old: the lag is far past the 0.5 s target, shown red.
    (lag,) = [m for m in at.metric if "Consumer lag" in m.label]
    assert lag.label == ":red[Consumer lag]" and "vs 0.5 s target" in lag.delta
    assert "Lag past the 0.5 s target" in [e.value for e in at.error]


def test_live_page_shows_a_camera_in_a_drift_episode(dashboard_env: None, redis_url: str) -> None:
    import redis

    from steelcore.redis.inspection_alarms import InspectionAlarms
    from steelcore.settings import Settings
    from workers.drift_monitor import DriftEvent

    stream = Settings().inspection_alarm_stream  # the name the embedded server's ACL grants
    client = redis.Redis.from_url(redis_url)
    client.delete(stream, f"{stream}:active")
    alarms = InspectionAlarms(client, stream)
    text = "camera L1/cam2: frames 41 gray levels darker than the model knows; results unreliable"
    try:
        alarms.publish(DriftEvent("L1/cam2", "raised", ("brightness",), text))
        at = _app().run()
        assert not at.exception, at.exception
        assert f"Inspection alarm: {text}" in [e.value for e in at.error]
        alarms.publish(DriftEvent("L1/cam2", "cleared", ("brightness",), "camera L1/cam2: back"))
        at = _app().run()
        assert not any("Inspection alarm" in e.value for e in at.error)
    finally:
        client.delete(stream, f"{stream}:active")
        client.close()


def test_an_operator_confirms_an_alarm_from_the_live_page(
    dashboard_env: None, dashboard_owner: Engine, seeded_records: list[FrameRecord]
) -> None:
    at = _app().run()
    first = next(b for b in at.button if b.key and b.key.startswith("alarm-"))
    assert first.disabled  # no operator name yet
    at.text_input(key="operator").input("ana").run()
    before = len(_feedback_rows(dashboard_owner))
    at.button(key=first.key.replace("-false", "-confirmed")).click().run()
    assert not at.exception, at.exception
    rows = _feedback_rows(dashboard_owner)
    assert len(rows) == before + 1
    alarm_id = int(first.key.split("-")[1])
    assert (rows[-1].alarm_id, rows[-1].verdict, rows[-1].operator) == (alarm_id, "confirmed", "ana")


def test_history_page_filters_pages_and_summarises(
    dashboard_env: None, seeded_records: list[FrameRecord]
) -> None:
    at = _app().run()
    at.switch_page("history_page.py").run()
    assert not at.exception, at.exception
    day_ago = datetime.now(UTC) - timedelta(days=1)
    last_day = [d for r in seeded_records if r.captured_at >= day_ago for d in r.defects]
    assert any(md.value == f"**{len(last_day):,}** matching defects" for md in at.markdown)
    assert len(at.dataframe[0].value) == min(25, len(last_day))

    at.selectbox(key="history_period").select("Last 7 days").run()
    at.multiselect(key="history_classes").select(3).run()
    class_3 = [d for r in seeded_records for d in r.defects if d.class_id == 3]
    assert any(md.value == f"**{len(class_3):,}** matching defects" for md in at.markdown)

    summary = at.dataframe[-1].value.set_index("coil")
    coil = [r for r in seeded_records if r.coil_id == RECENT_COIL]
    length = max(r.position_m for r in coil) - min(r.position_m for r in coil)
    expected = 100 * sum(1 for r in coil for d in r.defects if d.class_id == 3) / length
    assert summary.loc[RECENT_COIL, f"3 {CLASS_NAMES[3]}"] == pytest.approx(expected, abs=0.01)
    assert len(at.get("image")) == 1  # the frame viewer


def test_history_frame_viewer_takes_a_verdict_on_a_defect(
    dashboard_env: None, dashboard_owner: Engine
) -> None:
    at = _app().run()
    at.switch_page("history_page.py").run()
    at.text_input(key="operator").input("bo").run()
    button = next(b for b in at.button if b.key and b.key.startswith("defect-") and b.key.endswith("-false"))
    button.click().run()
    assert not at.exception, at.exception
    last = _feedback_rows(dashboard_owner)[-1]
    assert (last.defect_id, last.verdict, last.operator) == (int(button.key.split("-")[1]), "false", "bo")


def test_health_page_shows_services_model_and_throughput(
    dashboard_env: None, seeded_records: list[FrameRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stack.service import free_port
    from workers.worker_metrics import WorkerMetrics

    busy, calm = WorkerMetrics(), WorkerMetrics()
    busy.overloaded.set(1)
    urls = []
    for metrics in (busy, calm):
        port = free_port()
        metrics.serve(port)
        urls.append(f"http://127.0.0.1:{port}/metrics")
    monkeypatch.setenv("STEEL_DASHBOARD_WORKER_METRICS_URLS", json.dumps(urls))
    try:
        at = _app().run()
        at.switch_page("health_page.py").run()
    finally:
        busy.close()
        calm.close()
    assert not at.exception, at.exception
    services = at.dataframe[0].value.set_index("service")["status"].to_dict()
    assert services["postgres"] == "up" and services["redis"] == "up"
    assert services["triton"] == "DOWN"  # not started in this session
    assert _metric(at, "Workers use") == "default v1"
    assert _metric(at, "Frames in window") == str(sum(r.line_id == "L1" for r in seeded_records))
    stages = at.dataframe[1].value.set_index("stage")
    assert set(stages.index) == {"decode", "infer", "store", "capture to stored"}
    errors = [e.value for e in at.error]
    assert any(e.startswith("OVERLOADED: 1 of 2 workers") and urls[0] in e for e in errors), errors
    assert "Lag past the 0.5 s target" in errors


def test_login_is_required_when_switched_on(
    dashboard_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-pass\n")
    monkeypatch.setenv("STEEL_DASHBOARD_AUTH", "on")
    monkeypatch.setenv("STEEL_DASHBOARD_PASSWORD_FILE", str(secret))
    at = _app().run()
    assert not at.metric and not at.exception  # nothing but the form
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong password."]
    assert not at.metric
    at.text_input[0].input("s3cret-pass")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert _metric(at, "Frames/s")  # the live page rendered
