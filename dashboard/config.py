"""The dashboard's view of the settings, and address helpers for the login rule."""

from __future__ import annotations

import ipaddress
from typing import Literal

from steelcore.settings import Settings

AuthMode = Literal["auto", "on", "off"]


# The dashboard's fields live in the one Settings object; the alias keeps call sites readable.
DashboardSettings = Settings


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
