"""History page for engineers: filter, page through and export stored defects, view a frame.

Queries go through steelcore.postgres.defect_history and exports through steelcore.defect_export,
as `steel query` does; exports are built only when their download button is clicked.
"""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import streamlit as st
from sqlalchemy import Engine

from dashboard import ui
from steelcore.defect_export import kaggle_text, write_csv
from steelcore.postgres import frame_reads, live_reads
from steelcore.postgres.defect_history import (
    DENSITY_PER_M,
    DefectFilters,
    DefectRow,
    coil_summary_of,
    count_defects,
    query_defects,
)
from steelcore.postgres.verdicts import defect_verdicts
from steelcore.retraining_export import retraining_zip_file
from steelcore.severstal import CLASS_IDS, CLASS_NAMES

PERIODS = {
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(days=1),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "All time": None,
    "Custom": None,
}
PAGE_SIZES = (25, 50, 100, 250)
EXPORT_MAX_ROWS = 100_000
RETRAINING_MAX_FRAMES = 2000
MAX_SUMMARY_COILS = 500
ANY = "any"


def render() -> None:
    engine = ui.reader()
    st.title("History")
    with ui.database_errors():
        _history(engine)


def _history(engine: Engine) -> None:
    filters = _filters(engine)
    total = count_defects(engine, filters)
    page_size = st.session_state.get("history_page_size", PAGE_SIZES[0])
    pages = max(1, -(-total // page_size))
    if st.session_state.get("history_page", 1) > pages:  # the filters shrank the result
        st.session_state["history_page"] = 1
    head = st.columns([2, 1, 1])
    head[0].markdown(f"**{total:,}** matching defects")
    page_size = head[1].selectbox("Rows per page", PAGE_SIZES, key="history_page_size")
    page = head[2].number_input("Page", min_value=1, max_value=pages, value=1, step=1, key="history_page")
    rows = query_defects(engine, _replace(filters, limit=page_size, offset=(int(page) - 1) * page_size))
    st.dataframe([_table_row(r) for r in rows], hide_index=True)

    _exports(engine, filters)
    _frame_viewer(engine, rows)
    _coil_summary(engine, filters)


def _filters(engine: Engine) -> DefectFilters:
    pairs = live_reads.lines_and_cameras(engine)
    with st.expander("Filters", expanded=True):
        row1 = st.columns(4)
        period = row1[0].selectbox("Time range", list(PERIODS), index=1, key="history_period")
        line = row1[1].selectbox("Line", [ANY, *sorted({p[0] for p in pairs})], key="history_line")
        cameras = sorted({c for line_id, c in pairs if line in (ANY, line_id)})
        camera = row1[2].selectbox("Camera", [ANY, *cameras], key="history_camera")
        coil = row1[3].text_input("Coil", key="history_coil").strip()
        row2 = st.columns(3)
        classes = row2[0].multiselect(
            "Classes", list(CLASS_IDS), format_func=lambda c: f"{c} {CLASS_NAMES[c]}", key="history_classes"
        )
        min_area = row2[1].number_input(
            "Minimum area (px)", min_value=0, value=0, step=50, key="history_area"
        )
        min_severity = row2[2].slider("Minimum severity", 0.0, 1.0, 0.0, 0.05, key="history_severity")
        time_from, time_to = _time_range(period)
    return DefectFilters(
        time_from=time_from,
        time_to=time_to,
        line_id=None if line == ANY else line,
        camera_id=None if camera == ANY else camera,
        coil_id=coil or None,
        class_ids=tuple(classes) or None,
        min_area=int(min_area) or None,
        min_severity=float(min_severity) or None,
    )


def _time_range(period: str) -> tuple[datetime | None, datetime | None]:
    if period != "Custom":
        span = PERIODS[period]
        return (datetime.now(UTC) - span, None) if span is not None else (None, None)
    today = datetime.now(UTC).date()
    chosen = st.date_input("Days (UTC)", (today - timedelta(days=7), today), key="history_days")
    start, end = (chosen[0], chosen[-1]) if isinstance(chosen, tuple) and chosen else (today, today)
    return _utc_midnight(start), _utc_midnight(end) + timedelta(days=1)


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _replace(filters: DefectFilters, **changes: object) -> DefectFilters:
    return replace(filters, **changes)  # type: ignore[arg-type]


def _table_row(r: DefectRow) -> dict[str, object]:
    return {
        "captured_at (UTC)": r.captured_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "line": r.line_id,
        "camera": r.camera_id,
        "coil": r.coil_id,
        "pos_m": round(r.position_m, 2),
        "frame": r.frame_id,
        "class": f"{r.class_id} {CLASS_NAMES.get(r.class_id, '?')}",
        "area_px": r.area_px,
        "severity": round(r.severity, 3),
        "probability": round(r.probability, 3),
        "defect": r.defect_id,
    }


def defects_csv(engine: Engine, filters: DefectFilters) -> bytes:
    """Every matching defect (at most EXPORT_MAX_ROWS) as CSV, the columns of `steel query --format csv`."""
    buffer = io.StringIO()
    write_csv(buffer, query_defects(engine, _replace(filters, limit=EXPORT_MAX_ROWS, offset=0)))
    return buffer.getvalue().encode("utf-8")


def defects_kaggle_csv(engine: Engine, filters: DefectFilters) -> bytes:
    """Matching defects as ImageId,ClassId,EncodedPixels (ImageId = frame id, as `steel query`)."""
    rows = query_defects(engine, _replace(filters, limit=EXPORT_MAX_ROWS, offset=0))
    return kaggle_text(rows).encode("utf-8")


def _exports(engine: Engine, filters: DefectFilters) -> None:
    cols = st.columns(3)
    cols[0].download_button(
        "Export CSV",
        data=lambda: defects_csv(engine, filters),
        file_name="defects.csv",
        mime="text/csv",
        on_click="ignore",
        help=f"every matching defect, at most {EXPORT_MAX_ROWS:,}",
    )
    cols[1].download_button(
        "Export Kaggle CSV",
        data=lambda: defects_kaggle_csv(engine, filters),
        file_name="defects_kaggle.csv",
        mime="text/csv",
        on_click="ignore",
        help="ImageId,ClassId,EncodedPixels of every matching defect",
    )
    cols[2].download_button(
        "Retraining dataset (zip)",
        # Built into a temporary file on click; Streamlit reads that file once to serve it.
        data=lambda: retraining_zip_file(
            engine, since=filters.time_from, until=filters.time_to, max_frames=RETRAINING_MAX_FRAMES
        )[0],
        file_name="steel_reviewed.zip",
        mime="application/zip",
        on_click="ignore",
        help="train_images/*.jpg + train.csv of the reviewed frames in the time range",
    )


def _frame_viewer(engine: Engine, rows: list[DefectRow]) -> None:
    st.subheader("Frame viewer")
    if not rows:
        st.info("No defect on this page.")
        return
    frame_ids = list(dict.fromkeys(r.frame_id for r in rows))
    frame_id = st.selectbox("Frame", frame_ids, key="history_frame")
    detail = frame_reads.frame_details(engine, [frame_id]).get(frame_id)
    if detail is None:
        st.warning(f"frame {frame_id} is no longer stored")
        return
    ui.class_legend()
    ui.show_frame(engine, detail)
    verdicts = defect_verdicts(engine, [d.defect_id for d in detail.defects])
    ui.defects_table(detail.defects, verdicts)
    for mark in detail.defects:
        st.caption(f"Defect {mark.defect_id} · class {mark.class_id} {CLASS_NAMES.get(mark.class_id, '?')}")
        ui.feedback_buttons(key=f"defect-{mark.defect_id}", defect_id=mark.defect_id)


def _coil_summary(engine: Engine, filters: DefectFilters) -> None:
    st.subheader(f"Per coil: defects per {DENSITY_PER_M:g} m")
    summaries = coil_summary_of(engine, filters, limit=MAX_SUMMARY_COILS)
    if not summaries:
        st.info("No coil in the range.")
        return
    table = []
    for s in summaries:
        density = s.per_100m()
        row: dict[str, object] = {"coil": s.coil_id, "line": s.line_id, "frames": s.frames}
        row["length_m"] = round(s.length_m, 1)
        for c in CLASS_IDS:
            value = density.get(c, 0.0 if s.length_m > 0 else None)
            row[f"{c} {CLASS_NAMES[c]}"] = None if value is None else round(value, 2)
        table.append(row)
    st.dataframe(table, hide_index=True)


if __name__ == "__main__":
    render()
