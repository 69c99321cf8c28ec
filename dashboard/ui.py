"""Streamlit pieces every page shares: the cached engines, the frame viewer and feedback buttons."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import streamlit as st
from sqlalchemy import Engine
from streamlit.delta_generator import DeltaGenerator

from dashboard.config import DashboardSettings, load_dashboard_settings
from dashboard.overlays import blank_frame, class_colour_hex, overlay_masks
from steelcore.postgres.engine import feedback_url, open_feedback_writer, open_reader, reader_url
from steelcore.postgres.frame_images import load_frame_image
from steelcore.postgres.frame_reads import DefectMark, FrameDetail
from steelcore.postgres.verdicts import DefectVerdict, FeedbackError, record_feedback
from steelcore.severstal import CLASS_IDS, CLASS_NAMES

OPERATOR_KEY = "operator"
VERDICT_LABELS = {"confirmed": "Confirm", "false": "False alarm"}


def lag_metric(column: DeltaGenerator, lag_s: float | None, target_s: float) -> None:
    """The consumer lag as a metric, red (label and delta) past the latency target, with an error
    line under it saying so."""
    from dashboard.service_health import lag_verdict

    verdict = lag_verdict(lag_s, target_s)
    label = ":red[Consumer lag]" if verdict.over else "Consumer lag"
    column.metric(
        label,
        verdict.value,
        delta=verdict.delta,
        delta_color="inverse",  # above the target (a positive delta) is red
        help=f"now - newest stored frame's capture; target settings.latency_target_s = {target_s:g} s",
    )
    if verdict.over:
        column.error(f"Lag past the {target_s:g} s target")


def settings() -> DashboardSettings:
    return load_dashboard_settings()


@st.cache_resource(show_spinner=False)
def _reader(url: str) -> Engine:
    return open_reader(url)


@st.cache_resource(show_spinner=False)
def _feedback_writer(url: str) -> Engine:
    return open_feedback_writer(url)


def reader(config: DashboardSettings | None = None) -> Engine:
    """The read-only engine (one per URL per process, shared by every session)."""
    with database_errors():
        return _reader(reader_url(config or settings()))


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Show an unreachable, busy or unconfigured database as a message on the page, not a
    traceback."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    from steelcore.service_urls import ServiceUnavailableError

    try:
        yield
    except ServiceUnavailableError as exc:
        st.error(f"No defect database: {exc}")
        st.stop()
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        st.error(f"The defect database is unreachable: {reason}")
        st.stop()
    except PoolTimeoutError:
        # Every pooled connection is taken (many viewers, or slow queries): the next refresh
        # usually gets one, so say so instead of showing a traceback.
        st.error(
            "The defect database is busy: every connection is in use. The page retries on its next refresh."
        )
        st.stop()


def feedback_writer(config: DashboardSettings | None = None) -> Engine:
    return _feedback_writer(feedback_url(config or settings()))


@st.cache_data(max_entries=32, show_spinner=False)
def _overlay(_engine: Engine, frame_id: str, height: int, width: int, masks: tuple[tuple[int, str], ...]):
    # Keyed on the frame and its masks (stored rows never change); the engine is not hashed.
    stored = load_frame_image(_engine, frame_id)
    if stored is None:
        return overlay_masks(blank_frame(height, width), masks), False
    try:
        return overlay_masks(stored.pixels(), masks), True
    except ValueError:
        return overlay_masks(blank_frame(height, width), masks), False


def frame_overlay(engine: Engine, detail: FrameDetail) -> tuple[np.ndarray, bool]:
    """(RGB overlay of the frame's masks, whether the real image was available)."""
    masks = tuple((d.class_id, d.rle) for d in detail.defects)
    return _overlay(engine, detail.frame_id, detail.height, detail.width, masks)


def class_legend() -> None:
    swatches = " ".join(
        f"<span style='color:{class_colour_hex(c)}'>&#9632;</span> {c} {CLASS_NAMES[c]}" for c in CLASS_IDS
    )
    st.markdown(swatches, unsafe_allow_html=True)


def show_frame(engine: Engine, detail: FrameDetail) -> None:
    rgb, real = frame_overlay(engine, detail)
    classes = ", ".join(f"{d.class_id} {CLASS_NAMES.get(d.class_id, '?')}" for d in detail.defects)
    caption = (
        f"{detail.frame_id} · {detail.line_id}/{detail.camera_id} · coil {detail.coil_id} @ "
        f"{detail.position_m:.1f} m · {detail.captured_at:%H:%M:%S} UTC · {classes}"
    )
    if not real:
        caption += " · image not kept (masks only)"
    st.image(rgb, caption=caption, width="stretch")


def operator_name() -> str:
    return str(st.session_state.get(OPERATOR_KEY) or "").strip()


def verdict_text(verdict: DefectVerdict | None) -> str:
    if verdict is None:
        return "not reviewed"
    return f"{verdict.verdict} by {verdict.operator} ({verdict.created_at:%H:%M:%S})"


def feedback_buttons(
    *, key: str, defect_id: int | None = None, alarm_id: int | None = None, columns: Sequence | None = None
) -> None:
    """Confirm / false-alarm buttons for one defect or alarm, in ``columns`` (default: two narrow
    new ones); a click is stored at once."""
    operator = operator_name()
    if columns is None:
        columns = st.columns([1, 1, 4])[:2]
    for column, (verdict, label) in zip(columns, VERDICT_LABELS.items(), strict=True):
        clicked = column.button(
            label,
            key=f"{key}-{verdict}",
            disabled=not operator,
            help=None if operator else "enter your name in the sidebar first",
        )
        if clicked:
            try:
                record_feedback(
                    feedback_writer(),
                    verdict=verdict,
                    operator=operator,
                    defect_id=defect_id,
                    alarm_id=alarm_id,
                )
            except FeedbackError as exc:
                st.error(str(exc))
            else:
                target = f"defect {defect_id}" if defect_id is not None else f"alarm {alarm_id}"
                st.toast(f"{target} marked {verdict}")


def defects_table(marks: Sequence[DefectMark], verdicts: dict[int, DefectVerdict]) -> None:
    st.dataframe(
        [
            {
                "defect": m.defect_id,
                "class": f"{m.class_id} {CLASS_NAMES.get(m.class_id, '?')}",
                "area_px": m.area_px,
                "probability": round(m.probability, 3),
                "severity": round(m.severity, 3),
                "bbox": ",".join(map(str, m.bbox)),
                "review": verdict_text(verdicts.get(m.defect_id)),
            }
            for m in marks
        ],
        hide_index=True,
    )
