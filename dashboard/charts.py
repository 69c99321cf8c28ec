"""Altair charts of the dashboard, built from plain rows (no Streamlit, no database).

Classes are always drawn in steelcore.severstal.CLASS_COLOURS_RGB, named by CLASS_NAMES, so a
colour means the same class on every chart, overlay and export.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import altair as alt
import pandas as pd

from dashboard.overlays import class_colour_hex
from steelcore.postgres.frame_reads import StripMark
from steelcore.postgres.live_reads import CameraRate
from steelcore.severstal import CLASS_IDS, CLASS_NAMES


def class_label(class_id: int) -> str:
    return f"{class_id} {CLASS_NAMES.get(class_id, 'unknown')}"


def _class_scale(class_ids: Sequence[int]) -> alt.Scale:
    ids = sorted(set(CLASS_IDS).union(class_ids))
    return alt.Scale(domain=[class_label(c) for c in ids], range=[class_colour_hex(c) for c in ids])


def strip_map(marks: Sequence[StripMark], coil_id: str, length_m: float | None = None) -> alt.Chart:
    """The coil seen from above: position along it (x) against position across the width (y),
    one mark per defect, coloured by class and sized by area."""
    frame = pd.DataFrame(
        {
            "along_m": [m.position_m for m in marks],
            "across": [m.across_px / m.width_px if m.width_px else 0.0 for m in marks],
            "class": [class_label(m.class_id) for m in marks],
            "area_px": [m.area_px for m in marks],
            "severity": [m.severity for m in marks],
            "defect_id": [m.defect_id for m in marks],
        }
    )
    x_domain = [0.0, max(length_m or 0.0, float(frame["along_m"].max()) if len(frame) else 1.0)]
    return (
        alt.Chart(frame, title=f"Coil {coil_id}: {len(frame)} defects")
        .mark_circle(opacity=0.85)
        .encode(
            x=alt.X("along_m:Q", title="along the coil (m)", scale=alt.Scale(domain=x_domain)),
            y=alt.Y("across:Q", title="across width (0 = left)", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("class:N", scale=_class_scale([m.class_id for m in marks]), title="class"),
            size=alt.Size("area_px:Q", scale=alt.Scale(range=[20, 300]), legend=None),
            tooltip=["defect_id", "class", "along_m", "area_px", alt.Tooltip("severity:Q", format=".2f")],
        )
        .properties(height=280)
    )


def rates_chart(rates: Sequence[CameraRate]) -> alt.Chart:
    """Defect rate (share of frames with the class) per camera, one bar per class."""
    frame = pd.DataFrame(
        {
            "camera": [f"{r.line_id}/{r.camera_id}" for r in rates],
            "class": [class_label(r.class_id) for r in rates],
            "rate_pct": [100.0 * r.rate for r in rates],
            "defects": [r.defects for r in rates],
            "frames": [r.frames for r in rates],
        }
    )
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("camera:N", title=None),
            xOffset="class:N",
            y=alt.Y("rate_pct:Q", title="frames with defect (%)"),
            color=alt.Color("class:N", scale=_class_scale([r.class_id for r in rates]), title="class"),
            tooltip=["camera", "class", alt.Tooltip("rate_pct:Q", format=".1f"), "defects", "frames"],
        )
        .properties(height=240)
    )


def throughput_chart(per_minute: Sequence[tuple[datetime, int, float | None]]) -> alt.Chart:
    """Frames per second, averaged over each minute."""
    frame = pd.DataFrame(
        {
            "minute": [m for m, _, _ in per_minute],
            "frames_per_s": [n / 60.0 for _, n, _ in per_minute],
            "p50_ms": [p for _, _, p in per_minute],
        }
    )
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("minute:T", title=None),
            y=alt.Y("frames_per_s:Q", title="frames/s"),
            tooltip=["minute:T", alt.Tooltip("frames_per_s:Q", format=".2f"), "p50_ms"],
        )
        .properties(height=200)
    )
