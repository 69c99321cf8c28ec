"""The health page's "Models" section: registered versions and their roles, how the shadow version
agrees with production, both models against operator verdicts (the same figures and gate as
`steel models promote`, steelcore.model_agreement), the lifecycle audit trail and the cameras whose
input has drifted from what the model knows (an inspection alarm episode)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import streamlit as st
from sqlalchemy import Engine

from dashboard.inspection_feed import read_feed
from steelcore import model_agreement as ma
from steelcore.postgres import model_evidence
from steelcore.postgres.model_registry import Roles, read_roles
from steelcore.settings import Settings
from steelcore.severstal import CLASS_IDS, CLASS_NAMES
from steelcore.triton.model_names import VERSIONED_MODELS

AUDIT_ROWS = 50
# Newest shadowed frames the figures are computed over: a bound on the page's work per refresh
# (about 1 s of mask comparisons on these cores) whatever the window holds.
MAX_SHADOWED_FRAMES = 5000
FIGURES_CACHE_S = 15.0  # shadow figures move slowly; every viewer's 5 s refresh need not recompute


@dataclass(frozen=True)
class VersionRow:
    version: int
    bundle: str
    role: str  # "production", "shadow (10 %)" or ""
    registered_at: datetime
    registered_by: str
    input_shape: str


@dataclass(frozen=True)
class ShadowFigures:
    shadow_version: int
    production_version: int | None
    frames: int
    agreement: dict[int, ma.ClassAgreement]
    comparison: ma.VerdictComparison
    gate: ma.GateDecision


def versions(engine: Engine) -> list[VersionRow]:
    """Every registered version, newest first, with its role."""
    out: dict[int, VersionRow] = {}
    for r in model_evidence.versions_with_roles(engine):
        role = r.role or ""
        if r.role == "shadow" and r.share is not None:
            role = f"shadow ({r.share:.0%})"
        if r.version in out:  # a version holding both roles cannot happen; show both if it did
            role = f"{out[r.version].role}, {role}"
        out[r.version] = VersionRow(
            r.version, r.bundle, role, r.registered_at, r.registered_by, r.input_shape
        )
    return list(out.values())


def figured_shadow(engine: Engine, roles: Roles) -> int | None:
    """The shadow version to show figures for: the running one, else the last one that judged frames
    (so the figures a promotion was decided on stay visible after it)."""
    if roles.shadow is not None:
        return roles.shadow
    return model_evidence.last_shadowed_version(engine)


def production_beside(engine: Engine, shadow: int, roles: Roles) -> int | None:
    """The production version a past shadow ran beside: the one its latest shadow run was started
    against (audit), so a promoted shadow is still compared with what it replaced, not itself."""
    previous = model_evidence.shadow_started_against(engine, shadow)
    return previous if previous is not None else roles.production


def shadow_figures(
    engine: Engine,
    shadow_version: int,
    production_version: int | None,
    since: datetime,
    min_verdicts: int,
    limit: int = MAX_SHADOWED_FRAMES,
) -> ShadowFigures:
    evidence = model_evidence.read_evidence(
        engine, shadow_version, production_version=production_version, since=since, limit=limit
    )
    comparison = ma.compare_verdicts(evidence.frames, evidence.verdicts)
    return ShadowFigures(
        shadow_version=shadow_version,
        production_version=production_version,
        frames=len(evidence.frames),
        agreement=ma.mask_agreement(evidence.frames, CLASS_IDS),
        comparison=comparison,
        gate=ma.promote_gate(comparison, min_verdicts),
    )


def audit_trail(engine: Engine, limit: int = AUDIT_ROWS) -> list[Any]:
    return model_evidence.audit_trail(engine, limit)


def audit_summary(figures: dict[str, Any] | None) -> str:
    """One line of an audit row's figures: both models' F1 on the verdicts and the shadowed frames."""
    if not figures:
        return ""
    parts = []
    verdicts = figures.get("verdicts") or {}
    prod, shadow = verdicts.get("production") or {}, verdicts.get("shadow") or {}
    if prod.get("pairs"):
        parts.append(f"F1 candidate {_num(shadow.get('f1'))} vs production {_num(prod.get('f1'))}")
        parts.append(f"{prod['pairs']} verdicts")
    if figures.get("share") is not None:
        parts.append(f"share {float(figures['share']):.0%}")
    if figures.get("shadowed_frames") is not None:
        parts.append(f"{figures['shadowed_frames']} shadowed frames")
    dice = [a.get("mean_dice") for a in (figures.get("agreement") or {}).values()]
    dice = [d for d in dice if d is not None]
    if dice:
        parts.append(f"mean Dice {sum(dice) / len(dice):.3f}")
    return ", ".join(parts)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@st.cache_data(ttl=FIGURES_CACHE_S, show_spinner=False)
def _cached_figures(
    _engine: Engine, key: str, shadow: int, production: int | None, since: datetime, min_verdicts: int
) -> ShadowFigures:
    return shadow_figures(_engine, shadow, production, since, min_verdicts)


def triton_states(index: list[dict[str, str]] | None, version: int) -> str:
    """What Triton says of version V of the four versioned models: "loaded" when every one is READY,
    "not loaded" when none is known, else each one's state (and reason)."""
    if index is None:
        return "?"
    wanted = {m: "not loaded" for m in VERSIONED_MODELS}
    for row in index:
        if row["name"] in wanted and row["version"] == str(version):
            wanted[row["name"]] = row["state"] + (f" ({row['reason']})" if row.get("reason") else "")
    states = set(wanted.values())
    if states == {"READY"}:
        return "loaded"
    if len(states) == 1:  # all four alike, e.g. "UNAVAILABLE (unloaded)" after a promotion
        return states.pop()
    return ", ".join(f"{m} {state}" for m, state in wanted.items() if state != "READY")


def render(
    engine: Engine, config: Settings, now: datetime, triton_index: list[dict[str, str]] | None = None
) -> None:
    """The section; ``triton_index`` is Triton's repository index (None: Triton did not answer)."""
    st.subheader("Models")
    roles = read_roles(engine)
    rows = versions(engine)
    if not rows:
        st.caption(
            "No model version registered yet: the workers use the bundle Triton serves. "
            "`steel models shadow NAME` registers it as version 1 and a candidate beside it."
        )
    else:
        st.dataframe(
            [
                {
                    "version": r.version,
                    "bundle": r.bundle,
                    "role": r.role,
                    "registered": f"{r.registered_at:%Y-%m-%d %H:%M} UTC",
                    "by": r.registered_by,
                    "input": r.input_shape,
                    "Triton": triton_states(triton_index, r.version),
                }
                for r in rows
            ],
            hide_index=True,
            key="models_versions",
        )

    shadow = figured_shadow(engine, roles)
    if shadow is not None:
        window = timedelta(seconds=config.dashboard_models_window_s)
        # Rounded so the cache key holds still between refreshes.
        since = (now - window).replace(second=0, microsecond=0)
        running = roles.shadow == shadow
        production = roles.production if running else production_beside(engine, shadow, roles)
        figures = _cached_figures(
            engine, str(engine.url), shadow, production, since, config.promote_gate_min_verdicts
        )
        _shadow_view(figures, running=running, window=window)

    _drift_view(config)
    _audit_view(engine)


def _shadow_view(figures: ShadowFigures, *, running: bool, window: timedelta) -> None:
    production = f"v{figures.production_version}" if figures.production_version else "production"
    shadow = f"v{figures.shadow_version}"
    state = "shadow" if running else "last shadow"
    st.markdown(
        f"**Shadow agreement**: {state} {shadow} against {production} on {figures.frames} shadowed frames "
        f"of the last {_span(window)}"
    )
    if not figures.frames:
        st.caption("No shadowed frame stored yet in this window.")
        return
    st.dataframe(
        [
            {
                "class": f"{c} {CLASS_NAMES[c]}",
                "mean Dice": _round(a.mean_dice),
                "alarm agreement": _round(a.alarm_agreement),
                f"{production} says": a.production_says,
                f"{shadow} says": a.shadow_says,
            }
            for c, a in figures.agreement.items()
        ],
        hide_index=True,
        key="models_agreement",
    )
    st.markdown(f"**Against operator verdicts** ({figures.comparison.pairs} verdicts on shadowed frames)")
    st.dataframe(
        [
            {
                "model": name,
                "precision": _round(s.precision),
                "recall": _round(s.recall),
                "F1": _round(s.f1),
                "TP": s.tp,
                "FP": s.fp,
                "FN": s.fn,
                "TN": s.tn,
            }
            for name, s in (
                (f"{production} (production)", figures.comparison.production),
                (f"{shadow} ({state})", figures.comparison.shadow),
            )
        ],
        hide_index=True,
        key="models_verdicts",
    )
    if running:
        if figures.gate.passed:
            st.success(f"Promotion gate passes: {figures.gate.reason}")
        else:
            st.warning(f"Promotion gate refuses: {figures.gate.reason}")


def _drift_view(config: Settings) -> None:
    feed = read_feed(config)
    if feed.error:
        st.warning(f"Drift: the inspection alarm stream is unavailable ({feed.error})")
    elif not feed.active:
        st.caption("Drift: no camera in an inspection alarm episode.")
    else:
        for camera, entry in sorted(feed.active.items()):
            st.error(f"Drift: {entry.get('message') or camera}", icon=":material/videocam_off:")


def _audit_view(engine: Engine) -> None:
    trail = audit_trail(engine)
    st.markdown("**Audit trail** (newest first)")
    if not trail:
        st.caption("No lifecycle change yet.")
        return
    st.dataframe(
        [
            {
                "at": f"{r.at:%Y-%m-%d %H:%M:%S} UTC",
                "action": r.action,
                "version": r.version,
                "previous": r.previous_version,
                "by": r.actor,
                "forced": r.forced,
                "figures": audit_summary(r.figures),
            }
            for r in trail
        ],
        hide_index=True,
        key="models_audit",
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _span(window: timedelta) -> str:
    seconds = window.total_seconds()
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min"
