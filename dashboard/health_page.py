"""Health page: each service's status, the model Triton serves and the workers use, throughput and
latency from the frames table, the alarm stream's backlog, the models' versions, shadow figures,
drift and audit trail (dashboard/models_section.py) and the workers' own metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st
from sqlalchemy import Engine

from dashboard import charts, models_section, service_health, ui
from dashboard.config import DashboardSettings
from steelcore.postgres import live_reads
from steelcore.postgres.frame_images import retention_days, stored_image_bytes
from steelcore.postgres.model_registry import read_roles, version_bundles
from steelcore.triton.readiness import triton_model_versions, triton_repository_index

REFRESH_S = 5.0
HISTORY = timedelta(hours=1)
PROBE_CACHE_S = 4.0


@st.cache_data(ttl=PROBE_CACHE_S, show_spinner=False)
def _probes(_config: DashboardSettings, key: str) -> tuple:
    # Probes can each wait PROBE_TIMEOUT_S for a dead service: cache them across sessions.
    return (
        service_health.service_status(_config),
        triton_model_versions(_config, service_health.PROBE_TIMEOUT_S),
        service_health.alarm_backlog(_config),
        service_health.scrape_workers(_config.dashboard_worker_metrics_urls),
        triton_repository_index(_config, service_health.PROBE_TIMEOUT_S),
    )


def render() -> None:
    config = ui.settings()
    engine = ui.reader(config)
    st.title("Health")

    @st.fragment(run_every=REFRESH_S)
    def health() -> None:
        with ui.database_errors():
            _health_view(engine, config)

    health()


def _health_view(engine: Engine, config: DashboardSettings) -> None:
    now = datetime.now(UTC)
    status, (versions, triton_error), backlog, scrapes, (index, _) = _probes(config, config.model_dump_json())
    st.caption(f"Updated {now:%H:%M:%S} UTC")
    overloaded = service_health.overloaded_workers(scrapes)
    if overloaded:
        st.error(
            f"OVERLOADED: {len(overloaded)} of {len(scrapes)} workers fall behind the "
            f"{config.latency_target_s:g} s latency target and are not catching up: the load is more "
            f"than this machine serves. Lower the camera rate, add workers or a faster Triton. "
            f"({', '.join(overloaded)})"
        )

    st.subheader("Services")
    st.dataframe(
        [
            {
                "service": h.name,
                "status": "up" if h.up else "DOWN",
                "version": h.version or "",
                "where": h.url or "",
                "embedded": h.embedded,
                "detail": h.detail,
            }
            for h in status
        ],
        hide_index=True,
    )

    model = live_reads.model_in_use(engine)
    roles = read_roles(engine)
    production = (
        f"v{roles.production} {version_bundles(engine).get(roles.production, '?')}"
        if roles.production
        else None
    )
    cols = st.columns(3)
    served = f"ensemble versions served: {', '.join(versions)}" if versions else "ensemble unavailable"
    cols[0].metric("Triton model", config.triton_model, help=triton_error or served)
    # The ensemble itself has one version; which model it runs is the registry's production role.
    cols[1].metric(
        "Production model", production or "none registered", help="steel models; the Models section below"
    )
    workers = f"{model[0]} v{model[1]}" if model else "no frame yet"
    cols[2].metric("Workers use", workers, help=f"the model of the newest stored frame: {workers}")

    st.subheader("Throughput and latency")
    stats = live_reads.throughput(engine, now - timedelta(seconds=config.dashboard_window_s), now)
    lag = stats.event_lag_s(now)
    cols = st.columns(3)
    cols[0].metric(
        "Frames/s", f"{stats.frames_per_s:.2f}", help=f"over the last {config.dashboard_window_s:g} s"
    )
    ui.lag_metric(cols[1], lag, config.latency_target_s)
    cols[2].metric("Frames in window", stats.frames)
    st.dataframe(
        [
            {"stage": name, "p50 ms": _ms(p50), "p95 ms": _ms(p95)}
            for name, (p50, p95) in stats.latency_ms.items()
        ],
        hide_index=True,
    )
    per_minute = live_reads.frames_per_minute(engine, now - HISTORY, now)
    if per_minute:
        st.altair_chart(charts.throughput_chart(per_minute), width="stretch")

    st.subheader("Alarms and storage")
    cols = st.columns(3)
    cols[0].metric(
        "Alarm stream entries", "-" if backlog.length is None else backlog.length, help=backlog.error
    )
    cols[1].metric("Unacknowledged by actuators", "-" if backlog.pending is None else backlog.pending)
    cols[2].metric(
        "Frame images stored",
        f"{stored_image_bytes(engine) / 1e6:.1f} MB",
        help=f"kept {retention_days(config):g} days (steelcore/postgres/frame_images.py)",
    )

    models_section.render(engine, config, now, index)

    if scrapes:
        st.subheader("Worker metrics")
        answered = [s for s in scrapes if not s.error]
        st.caption(f"{len(answered)} of {len(scrapes)} worker replicas answered; counters summed over them")
        totals = service_health.worker_totals(scrapes)
        st.dataframe([{"metric": k, "all replicas": v} for k, v in sorted(totals.items())], hide_index=True)
        for scrape in scrapes:
            where = f"{scrape.url} ({scrape.service})" if scrape.service else scrape.url
            if scrape.error:
                st.warning(f"{where}: {scrape.error}")
            else:
                st.caption(where)
                st.dataframe(
                    [{"metric": k, "value": v} for k, v in sorted(scrape.samples.items())], hide_index=True
                )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


if __name__ == "__main__":
    render()
