"""Optional password login in front of every page.

Streamlit's own ``st.login`` needs an OpenID Connect provider; a plant network often has none, so
this is a single shared password, settings-driven:
- ``dashboard_auth = "auto"`` (default): required when the dashboard listens beyond localhost;
  ``"on"`` / ``"off"`` force it;
- the password comes from STEEL_DASHBOARD_PASSWORD or the file STEEL_DASHBOARD_PASSWORD_FILE
  (a mounted secret), is held as a SecretStr, never logged, and compared in constant time.

Guessing is throttled per source address (and per user name, which this single-password form does
not have, so the user part is empty): the throttle is one object in the server process, shared by
every browser session, so opening parallel sessions buys no extra attempts. One attempt per
source is let through at a time, and after ``n`` consecutive failures the next attempt waits
``FAILED_LOGIN_DELAY_S * 2**(n-1)`` seconds, at most ``MAX_LOGIN_DELAY_S``; a success clears the
count. An attempt made too early is refused without looking at the password. The source address
is the TCP peer, or, when that peer is a proxy listed in ``dashboard_trusted_proxies``, the
nearest untrusted address in its X-Forwarded-For header.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from dashboard.config import DashboardSettings, is_loopback
from steelcore.errors import SteelError

log = logging.getLogger(__name__)

FAILED_LOGIN_DELAY_S = 1.0
MAX_LOGIN_DELAY_S = 60.0
# Sources remembered at once; the least recently seen is forgotten first. 10,000 keys are ~2 MB.
MAX_THROTTLE_KEYS = 10_000
# A source with no failure for this long starts again from a clean count.
THROTTLE_FORGET_S = 3600.0
SESSION_KEY = "steel_authenticated"


class AuthConfigError(SteelError, ValueError):
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


@dataclass
class _Source:
    failures: int = 0
    not_before: float = 0.0  # monotonic time of the next attempt allowed
    last_seen: float = 0.0


class LoginThrottle:
    """Failed logins per key (source address, user name), for every session of the process.

    Thread-safe (Streamlit runs each session's script in its own thread) and bounded to
    ``max_keys`` sources. ``begin(key)`` asks for one attempt: 0.0 means go ahead (and holds the
    key for ``base_delay_s`` so a parallel attempt must wait), otherwise the seconds to wait;
    ``failed`` and ``succeeded`` report how the attempt ended.
    """

    def __init__(
        self,
        *,
        base_delay_s: float = FAILED_LOGIN_DELAY_S,
        max_delay_s: float = MAX_LOGIN_DELAY_S,
        max_keys: int = MAX_THROTTLE_KEYS,
        forget_s: float = THROTTLE_FORGET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_keys = max_keys
        self.forget_s = forget_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: OrderedDict[tuple[str, str], _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def delay_after(self, failures: int) -> float:
        """Seconds a source waits after ``failures`` consecutive failed attempts."""
        if failures <= 0:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(failures - 1, 62))

    def begin(self, key: tuple[str, str]) -> float:
        now = self._clock()
        with self._lock:
            source = self._touch(key, now)
            if source.not_before > now:
                return source.not_before - now
            source.not_before = now + self.base_delay_s  # one attempt in flight per source
            return 0.0

    def failed(self, key: tuple[str, str]) -> float:
        """Count a failure; returns the seconds the source must now wait."""
        now = self._clock()
        with self._lock:
            source = self._touch(key, now)
            source.failures += 1
            wait = self.delay_after(source.failures)
            source.not_before = max(source.not_before, now + wait)
            return wait

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._sources.pop(key, None)

    def _touch(self, key: tuple[str, str], now: float) -> _Source:
        source = self._sources.get(key)
        if source is not None and now - source.last_seen > self.forget_s and source.not_before <= now:
            source = None  # quiet for long enough: a clean count
        if source is None:
            source = _Source()
            self._sources[key] = source
            while len(self._sources) > self.max_keys:
                self._sources.popitem(last=False)
        self._sources.move_to_end(key)
        source.last_seen = now
        return source


# One per server process: every browser session checks the same counts.
THROTTLE = LoginThrottle()


def client_address(
    peer: str | None,
    forwarded_for: str | None,
    trusted_proxies: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str:
    """The address a login attempt comes from. ``peer`` is the TCP peer (None: this machine).
    Behind a trusted proxy, the right-most X-Forwarded-For entry that is not itself a trusted
    proxy (entries further left were written by the client and could be anything)."""
    networks = [ipaddress.ip_network(str(n), strict=False) for n in trusted_proxies]

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in networks)

    address = peer or "127.0.0.1"
    if not forwarded_for or not trusted(address):
        return address
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
        address = hop
    return address


def _request_source(settings: DashboardSettings) -> str:
    import streamlit as st

    peer = st.context.ip_address
    forwarded = st.context.headers.get("X-Forwarded-For") if st.context.headers is not None else None
    return client_address(
        peer if isinstance(peer, str) else None,  # None: this machine (also in Streamlit's AppTest)
        forwarded if isinstance(forwarded, str) else None,
        settings.dashboard_trusted_proxies,
    )


@dataclass(frozen=True)
class LoginResult:
    accepted: bool
    wait_s: float  # before this source may try again
    throttled: bool = False  # refused before the password was looked at


def check_login(
    given: str, expected: SecretStr, source: str, *, user: str = "", throttle: LoginThrottle | None = None
) -> LoginResult:
    """One login attempt from ``source``; one made before the source's wait is over is refused
    without comparing the password."""
    throttle = THROTTLE if throttle is None else throttle
    key = (source, user)
    wait = throttle.begin(key)
    if wait > 0:
        return LoginResult(False, wait, throttled=True)
    if password_matches(given, expected):
        throttle.succeeded(key)
        return LoginResult(True, 0.0)
    return LoginResult(False, throttle.failed(key))


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
        source = _request_source(settings)
        result = check_login(given, expected, source)
        if result.accepted:
            st.session_state[SESSION_KEY] = True
            log.info("dashboard login succeeded from %s", source)
            st.rerun()
        if result.throttled:
            wait = math.ceil(result.wait_s)
            log.warning("dashboard login from %s refused unchecked: %d s to wait", source, wait)
            st.error(f"Too many failed attempts from your address: try again in {wait} s.")
        else:
            log.warning("dashboard login failed from %s", source)
            # Answer after the first wait, so one mistyped password can be corrected at once; a
            # longer wait is told instead of slept (it would hold this session's thread).
            time.sleep(min(result.wait_s, FAILED_LOGIN_DELAY_S))
            rest = math.ceil(result.wait_s - FAILED_LOGIN_DELAY_S)
            st.error("Wrong password." if rest <= 0 else f"Wrong password. Try again in {rest} s.")
    return False


def logout() -> None:
    import streamlit as st

    st.session_state.pop(SESSION_KEY, None)
