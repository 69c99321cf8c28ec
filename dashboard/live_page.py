"""Live page for operators: refreshes itself every dashboard_refresh_s without reloading.

Everything below the line filter is one fragment with ``run_every``, so only it reruns on each
tick; a click on a feedback button reruns it at once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st
from sqlalchemy import Engine

from dashboard import charts, ui
from dashboard.config import DashboardSettings
from dashboard.inspection_feed import read_feed
from steelcore.postgres import frame_reads, live_reads
from steelcore.postgres.verdicts import defect_verdicts
from steelcore.severstal import CLASS_NAMES

ALARM_FEED_ROWS = 6
LATEST_FRAMES = 3
ALL_LINES = "all lines"


def render() -> None:
    config = ui.settings()
    engine = ui.reader(config)
    st.title("Live")
    with ui.database_errors():
        lines = sorted({line for line, _ in live_reads.lines_and_cameras(engine)})
    choice = st.selectbox("Line", [ALL_LINES, *lines], key="live_line")
    line_id = None if choice == ALL_LINES else choice

    @st.fragment(run_every=config.dashboard_refresh_s)
    def live() -> None:
        with ui.database_errors():
            _live_view(engine, config, line_id)

    live()


def _live_view(engine: Engine, config: DashboardSettings, line_id: str | None) -> None:
    now = datetime.now(UTC)
    since = now - timedelta(seconds=config.dashboard_window_s)
    stats = live_reads.throughput(engine, since, now, line_id=line_id)
    rates = live_reads.camera_rates(engine, since, line_id=line_id)
    alarm_rows = live_reads.recent_alarms(engine, ALARM_FEED_ROWS, line_id=line_id)

    covered = config.dashboard_window_s if stats.covered_s is None else stats.covered_s
    st.caption(f"Updated {now:%H:%M:%S} UTC · rates over the last {config.dashboard_window_s:g} s")
    _inspection_banner(config, line_id)
    lag = stats.event_lag_s(now)
    p95 = stats.latency_ms["capture to stored"][1]
    cols = st.columns(4)
    cols[0].metric("Frames/s", f"{stats.frames_per_s:.2f}", help=f"frames of the last {covered:.0f} s")
    ui.lag_metric(cols[1], lag, config.latency_target_s)
    cols[2].metric("Capture→stored p95", "-" if p95 is None else f"{p95:.0f} ms")
    cols[3].metric("Defects in window", sum(r.defects for r in rates))

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Defect rate per camera and class")
        if rates:
            st.altair_chart(charts.rates_chart(rates), width="stretch")
        else:
            st.info("No frames in the window.")
        _coil_map(engine, line_id)
    with right:
        st.subheader("Alarms")
        _alarm_feed(engine, alarm_rows)

    st.subheader("Latest defective frames")
    ui.class_legend()
    latest = frame_reads.recent_defective_frames(engine, since, LATEST_FRAMES, line_id=line_id)
    if not latest:
        st.info("No defective frame in the window.")
    for detail in latest:
        ui.show_frame(engine, detail)


def _coil_map(engine: Engine, line_id: str | None) -> None:
    coil = live_reads.current_coil(engine, line_id=line_id)
    st.subheader(f"Current coil {coil}" if coil else "Current coil")
    if coil is None:
        st.info("No frame stored yet.")
    else:
        st.altair_chart(charts.strip_map(frame_reads.coil_marks(engine, coil), coil), width="stretch")


def _alarm_feed(engine: Engine, alarm_rows: list[live_reads.AlarmRow]) -> None:
    if not alarm_rows:
        st.info("No alarms.")
        return
    verdicts = defect_verdicts(engine, [a.defect_id for a in alarm_rows])
    for alarm in alarm_rows:
        with st.container(border=True):
            st.markdown(
                f"**{alarm.raised_at:%H:%M:%S}** · {alarm.class_id} {CLASS_NAMES.get(alarm.class_id, '?')} · "
                f"p={alarm.probability:.2f} · {alarm.area_px} px · "
                f"*{ui.verdict_text(verdicts.get(alarm.defect_id))}*  \n"
                f"{alarm.line_id}/{alarm.camera_id} · coil {alarm.coil_id} · `{alarm.frame_id}`"
            )
            ui.feedback_buttons(key=f"alarm-{alarm.alarm_id}", alarm_id=alarm.alarm_id, columns=st.columns(2))


def _inspection_banner(config: DashboardSettings, line_id: str | None) -> None:
    """A camera whose frames left what the model knows: its results are not to be trusted."""
    feed = read_feed(config, line_id)
    if feed.error:
        st.caption(f"Inspection alarms unavailable: {feed.error}")
    for camera, entry in sorted(feed.active.items()):
        st.error(f"Inspection alarm: {entry.get('message') or camera}", icon=":material/videocam_off:")


if __name__ == "__main__":
    render()
