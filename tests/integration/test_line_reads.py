"""What one line stored since a moment (steelcore.postgres.line_reads, read by the demo summary, the
lifecycle scene and the pipeline bench) and the scene's unjudged defects
(steelcore.postgres.verdicts.defects_without_verdict), on the dashboard seed. Expectations come
from the seeded records."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dashboard_seed import seed
from sqlalchemy import Engine

from steelcore.postgres import line_reads, verdicts

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
SINCE = NOW - timedelta(seconds=30)  # the second half of line L1's frames


@pytest.fixture(scope="module")
def records(dashboard_owner: Engine) -> list:
    return seed(dashboard_owner, NOW)  # at NOW, which SINCE is counted from


def _stored_at(record: Any) -> datetime:
    """When the seed says the frame was stored (a FrameRecord)."""
    return record.received_at + timedelta(milliseconds=record.store_ms)


def test_a_runs_figures_count_its_lines_frames_since_its_start(
    dashboard_owner: Engine, records: list
) -> None:
    ours = [r for r in records if r.line_id == "L1" and r.captured_at >= SINCE]
    assert ours and len(ours) < sum(r.line_id == "L1" for r in records)

    count, first, last = line_reads.stored_span(dashboard_owner, "L1", SINCE)
    assert count == len(ours)
    assert first == min(r.captured_at for r in ours)
    assert last == max(_stored_at(r) for r in ours)
    assert line_reads.defects_per_class(dashboard_owner, "L1", SINCE) == dict(
        Counter(d.class_id for r in ours for d in r.defects)
    )
    assert line_reads.alarm_count(dashboard_owner, "L1", SINCE) == sum(len(r.alarms) for r in ours)
    assert line_reads.frames_judged_by(dashboard_owner, "L1", SINCE, 1) == len(ours)
    assert line_reads.frames_judged_by(dashboard_owner, "L1", SINCE, 2) == 0
    assert line_reads.stored_span(dashboard_owner, "L9", None) == (0, None, None)


def test_newly_stored_frames_and_their_masks(dashboard_owner: Engine, records: list) -> None:
    cut = NOW - timedelta(seconds=10)
    expected = {r.frame_id: _stored_at(r) for r in records if r.line_id == "L1" and _stored_at(r) >= cut}
    assert expected
    assert dict(line_reads.frames_stored_since(dashboard_owner, "L1", None, cut)) == expected

    defective = [r for r in records if r.line_id == "L1" and r.defects][:3]
    masks = line_reads.defect_masks(dashboard_owner, [r.frame_id for r in defective])
    assert sorted(masks) == sorted((r.frame_id, d.class_id, d.rle) for r in defective for d in r.defects)
    assert line_reads.defect_masks(dashboard_owner, []) == []


def test_a_lines_frame_times(dashboard_owner: Engine, records: list) -> None:
    old = [r for r in records if r.line_id == "L2"]
    assert line_reads.frame_count(dashboard_owner, "L2") == len(old)
    assert sorted(line_reads.stored_times(dashboard_owner, "L2")) == sorted(_stored_at(r) for r in old)
    assert sorted(line_reads.frame_stamps(dashboard_owner, "L2")) == sorted(
        (r.captured_at, r.received_at, _stored_at(r)) for r in old
    )


def test_defects_without_a_verdict_leave_out_those_judged(dashboard_owner: Engine, records: list) -> None:
    captured = {r.frame_id: r.captured_at for r in records}
    rows = verdicts.defects_without_verdict(dashboard_owner, "L1", SINCE)
    ours = [r for r in records if r.line_id == "L1" and r.captured_at >= SINCE]
    expected = {(r.frame_id, d.class_id) for r in ours for d in r.defects}
    assert {(r.frame_id, r.class_id) for r in rows} == expected
    times = [captured[r.frame_id] for r in rows]
    assert times == sorted(times)  # oldest first
    assert len(verdicts.defects_without_verdict(dashboard_owner, "L1", SINCE, limit=2)) == 2

    judged = rows[0].defect_id
    verdicts.record_feedback(dashboard_owner, verdict="confirmed", operator="ana", defect_id=judged)
    after = verdicts.defects_without_verdict(dashboard_owner, "L1", SINCE)
    assert {r.defect_id for r in after} == {r.defect_id for r in rows} - {judged}
