"""The dashboard's settings: steelcore.settings.Settings plus the fields only the dashboard reads.

Interim: these fields are requested for steelcore/settings.py (the lead's file). Until they are
there, DashboardSettings adds them to Settings under the same STEEL_ prefix, so the environment
variables already work (STEEL_DASHBOARD_PASSWORD, STEEL_DASHBOARD_AUTH, ...) and nothing else
changes when they move: DashboardSettings then becomes Settings itself.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from steelcore.settings import Settings

AuthMode = Literal["auto", "on", "off"]


class DashboardSettings(Settings):
    dashboard_address: str = Field("127.0.0.1", description="address `steel dashboard` listens on")
    dashboard_port: int = Field(8501, ge=1, le=65535, description="port `steel dashboard` listens on")
    dashboard_refresh_s: float = Field(1.5, ge=0.5, le=60.0, description="live page refresh period, seconds")
    dashboard_window_s: float = Field(
        300.0, ge=10.0, le=86400.0, description="rolling window of the live page's rates, seconds"
    )
    dashboard_auth: AuthMode = Field(
        "auto", description="password login: auto = on when listening beyond localhost"
    )
    dashboard_password: SecretStr | None = Field(None, description="login password (or use the file)")
    dashboard_password_file: Path | None = Field(None, description="file holding the login password")
    dashboard_db_url: str | None = Field(
        None, description="read-only login URL; unset = the defect DB URL as role steel_dashboard"
    )
    dashboard_feedback_db_url: str | None = Field(
        None, description="feedback writer login URL; unset = the defect DB URL as role steel_feedback"
    )
    dashboard_worker_metrics_urls: tuple[str, ...] = Field(
        (), description="workers' Prometheus endpoints (http://host:port/metrics) for the health page"
    )


def load_dashboard_settings() -> DashboardSettings:
    """Read from the environment on every call: cheap, and a test can change it between runs."""
    return DashboardSettings()


def is_loopback(address: str) -> bool:
    """True for an address reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat as public
