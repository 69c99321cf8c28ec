"""The health page's "Models" section (dashboard/models_section.py) rendered by AppTest on seeded
data: registered versions and roles, shadow agreement per class, both models against operator
verdicts and the promotion gate, the audit trail and a camera in a drift episode.

Expectations are counted here from the seeded records, by the definitions of the lifecycle design,
never from steelcore.model_agreement."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dashboard_seed import seed_models
from sqlalchemy import Engine, text
from streamlit.testing.v1 import AppTest

from steelcore.model_agreement import audit_figures, compare_verdicts, mask_agreement
from steelcore.postgres.frame_records import FrameRecord
from steelcore.postgres.model_evidence import read_evidence
from steelcore.settings import Settings
from steelcore.severstal import CLASS_IDS, CLASS_NAMES

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TIMEOUT_S = 60.0


def _health() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    at.switch_page("health_page.py").run()
    assert not at.exception, at.exception
    return at


def _table(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_models_section_shows_versions_agreement_verdicts_audit_and_drift(
    dashboard_env: None, dashboard_owner: Engine, seeded_records: list[FrameRecord], redis_url: str
) -> None:
    import redis

    from steelcore.redis.inspection_alarms import InspectionAlarms
    from workers.drift_monitor import DriftEvent

    at = _health()
    assert any("No model version registered yet" in c.value for c in at.caption)
    assert next(m.value for m in at.metric if m.label == "Production model") == "none registered"
    assert any("no camera in an inspection alarm episode" in c.value for c in at.caption)

    seeded = seed_models(dashboard_owner, seeded_records, datetime.now(UTC))
    stream = Settings().inspection_alarm_stream
    client = redis.Redis.from_url(redis_url)
    client.delete(stream, f"{stream}:active")
    drift = "camera L1/cam2: frames 41 gray levels darker than the model knows; results unreliable"
    try:
        InspectionAlarms(client, stream).publish(DriftEvent("L1/cam2", "raised", ("brightness",), drift))
        at = _health()
    finally:
        client.delete(stream, f"{stream}:active")
        client.close()

    versions = _table(at, "bundle").set_index("version")
    assert versions.loc[1, "bundle"] == "default" and versions.loc[1, "role"] == "production"
    assert versions.loc[2, "bundle"] == "synthetic" and versions.loc[2, "role"] == "shadow (50%)"

    recent = seeded["recent"]
    assert any(f"shadow v2 against v1 on {len(recent)} shadowed frames" in m.value for m in at.markdown)
    agreement = _table(at, "mean Dice").set_index("class")
    for c in CLASS_IDS:
        production_says = [any(d.class_id == c for d in r.defects) for r in recent]
        shadow_says = [c in seeded["shadow"][r.frame_id] for r in recent]
        # The shadow's masks are production's own or empty: Dice 1 where both agree, 0 elsewhere.
        both_or_neither = sum(p == s for p, s in zip(production_says, shadow_says, strict=True)) / len(recent)
        row = agreement.loc[f"{c} {CLASS_NAMES[c]}"]
        assert row["mean Dice"] == pytest.approx(both_or_neither, abs=1e-3)
        assert row["alarm agreement"] == pytest.approx(both_or_neither, abs=1e-3)
        assert row["v1 says"] == sum(production_says) and row["v2 says"] == sum(shadow_says)
    assert agreement.loc[f"3 {CLASS_NAMES[3]}", "v2 says"] >= 1  # the shadow-only mark counts

    confirmed = sum(len(r.defects) for r in seeded["defective"] if seeded["copies"][r.frame_id])
    false = sum(len(r.defects) for r in seeded["defective"] if not seeded["copies"][r.frame_id])
    scores = _table(at, "precision").set_index("model")
    production = scores.loc["v1 (production)"]
    assert (production["TP"], production["FP"], production["FN"]) == (confirmed, false, 0)
    assert production["F1"] == pytest.approx(2 * confirmed / (2 * confirmed + false), abs=1e-3)
    shadow = scores.loc["v2 (shadow)"]
    assert (shadow["TP"], shadow["FP"], shadow["FN"], shadow["TN"]) == (confirmed, 0, 0, false)
    assert shadow["F1"] == 1.0
    assert any(
        "Promotion gate passes: candidate F1 1.000 >= production's" in s.value
        and f"on {confirmed + false} verdicts" in s.value
        for s in at.success
    )

    audit = _table(at, "action")
    assert list(audit["action"]) == ["promote", "shadow", "register"]  # newest first
    assert audit.iloc[0]["by"] == "bo" and bool(audit.iloc[0]["forced"])
    assert audit.iloc[0]["figures"].startswith("F1 candidate 0.800 vs production 0.500, 12 verdicts")

    assert f"Drift: {drift}" in [e.value for e in at.error]
    assert set(versions["Triton"]) == {"?"}  # no Triton in this test: its state is unknown, not "loaded"

    # Promoted: v2 is production and no shadow runs. Its figures stay, still against v1 (the version
    # it shadowed, from the audit), not against itself; there is no gate to pass any more.
    with dashboard_owner.begin() as conn:
        conn.execute(text("DELETE FROM model_roles WHERE role = 'shadow'"))
        conn.execute(text("UPDATE model_roles SET version = 2 WHERE role = 'production'"))
    at = _health()
    assert any(f"last shadow v2 against v1 on {len(recent)} shadowed frames" in m.value for m in at.markdown)
    assert not any("Promotion gate" in s.value for s in at.success)
    assert _table(at, "bundle").set_index("version").loc[2, "role"] == "production"
    assert next(m.value for m in at.metric if m.label == "Production model") == "v2 synthetic"


def test_agreement_figures_read_back_as_the_page_computes_them(
    dashboard_owner: Engine, seeded_records: list[FrameRecord]
) -> None:
    # read_evidence on its own: the window leaves out the old L2 frames, the limit keeps the newest,
    # and the figures survive a JSON round trip as an audit row stores them.
    with dashboard_owner.connect() as conn:
        registered = conn.execute(text("SELECT count(*) FROM model_versions")).scalar()
    if not registered:  # run on its own, without the page test before it
        seed_models(dashboard_owner, seeded_records, datetime.now(UTC))
    now = datetime.now(UTC)
    everything = read_evidence(dashboard_owner, 2)
    windowed = read_evidence(dashboard_owner, 2, production_version=1, since=now - timedelta(hours=1))
    newest = read_evidence(dashboard_owner, 2, since=now - timedelta(hours=1), limit=5)
    recent = [r for r in seeded_records if r.line_id == "L1"]
    assert len(everything.frames) == len(recent) + 4
    assert {f.frame_id for f in windowed.frames} == {r.frame_id for r in recent}
    assert {f.frame_id for f in newest.frames} == {
        r.frame_id for r in sorted(recent, key=lambda r: r.captured_at)[-5:]
    }
    assert read_evidence(dashboard_owner, 2, production_version=7).frames == []  # no frame judged by v7
    # One verdict per defect: the superseded 'confirmed' is not counted twice.
    pairs = [(v.frame_id, v.class_id) for v in windowed.verdicts]
    assert len(pairs) == len(set(pairs)) == sum(len(r.defects) for r in recent)
    figures = audit_figures(
        mask_agreement(windowed.frames, CLASS_IDS), compare_verdicts(windowed.frames, windowed.verdicts)
    )
    assert json.loads(json.dumps(figures))["shadowed_frames"] == len(recent)
