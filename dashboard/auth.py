"""Optional password login in front of every page.

Streamlit's own ``st.login`` needs an OpenID Connect provider; a plant network often has none, so
this is a single shared password, settings-driven:
- ``dashboard_auth = "auto"`` (default): required when the dashboard listens beyond localhost;
  ``"on"`` / ``"off"`` force it;
- the password comes from STEEL_DASHBOARD_PASSWORD or the file STEEL_DASHBOARD_PASSWORD_FILE
  (a mounted secret), is held as a SecretStr, never logged, and compared in constant time.
A failed attempt costs FAILED_LOGIN_DELAY_S, which slows guessing without locking anyone out.
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path

from pydantic import SecretStr

from dashboard.config import DashboardSettings, is_loopback

log = logging.getLogger(__name__)

FAILED_LOGIN_DELAY_S = 1.0
SESSION_KEY = "steel_authenticated"


class AuthConfigError(ValueError):
    """Login is required but no usable password is configured."""


def login_required(settings: DashboardSettings, address: str) -> bool:
    """Whether the dashboard listening on ``address`` must ask for the password."""
    if settings.dashboard_auth == "on":
        return True
    if settings.dashboard_auth == "off":
        return False
    return not is_loopback(address)


def configured_password(settings: DashboardSettings) -> SecretStr | None:
    """The password from settings, else from the password file; None when neither is set.
    Raises AuthConfigError for an unreadable or empty file, or an empty password."""
    if settings.dashboard_password is not None:
        if not settings.dashboard_password.get_secret_value():
            raise AuthConfigError("STEEL_DASHBOARD_PASSWORD is set but empty")
        return settings.dashboard_password
    path = settings.dashboard_password_file
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthConfigError(f"cannot read the dashboard password file {path}: {exc.strerror}") from None
    secret = text.rstrip("\r\n")  # a trailing newline from `echo` is not part of the password
    if not secret:
        raise AuthConfigError(f"the dashboard password file {path} is empty")
    return SecretStr(secret)


def require_password(settings: DashboardSettings, address: str) -> SecretStr | None:
    """The password to check, or None when login is off. Raises AuthConfigError when login is
    required and no password is configured (the dashboard must not start open)."""
    if not login_required(settings, address):
        return None
    password = configured_password(settings)
    if password is None:
        raise AuthConfigError(
            f"the dashboard listens on {address or 'every interface'}, beyond localhost, so it needs a "
            "password: set "
            "STEEL_DASHBOARD_PASSWORD or STEEL_DASHBOARD_PASSWORD_FILE (or listen on 127.0.0.1)"
        )
    return password


def password_matches(given: str, expected: SecretStr) -> bool:
    """Constant-time comparison, so the response time tells nothing about the password."""
    return hmac.compare_digest(given.encode("utf-8"), expected.get_secret_value().encode("utf-8"))


def login_gate(settings: DashboardSettings, address: str) -> bool:
    """Show the login form until the session has logged in; True when the page may render."""
    import streamlit as st

    try:
        expected = require_password(settings, address)
    except AuthConfigError as exc:
        st.error(str(exc))
        return False
    if expected is None or st.session_state.get(SESSION_KEY):
        return True
    st.title("Steel inspection")
    with st.form("login"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        if password_matches(given, expected):
            st.session_state[SESSION_KEY] = True
            log.info("dashboard login succeeded")
            st.rerun()
        log.warning("dashboard login failed")
        time.sleep(FAILED_LOGIN_DELAY_S)
        st.error("Wrong password.")
    return False


def logout() -> None:
    import streamlit as st

    st.session_state.pop(SESSION_KEY, None)
