"""The dashboard's login throttle: per source address, shared by every session of the process."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fake_clock import FakeClock
from pydantic import SecretStr

from dashboard import auth
from dashboard.auth import LoginThrottle, check_login, client_address

APP = Path(auth.__file__).with_name("app.py")
PASSWORD = SecretStr("correct horse")


def test_parallel_attempts_from_one_address_get_one_password_check() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(base_delay_s=1.0, clock=clock)
    results = []
    start = threading.Barrier(16)

    def guess(i: int) -> None:
        start.wait()
        results.append(check_login(f"guess {i}", PASSWORD, "10.0.0.7", throttle=throttle))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checked = [r for r in results if not r.throttled]
    assert len(checked) == 1 and not checked[0].accepted
    assert all(r.wait_s > 0 and not r.accepted for r in results)
    # Even the right password is not looked at while the address must wait ...
    assert check_login("correct horse", PASSWORD, "10.0.0.7", throttle=throttle).throttled
    # ... while another address is not slowed down by it.
    assert check_login("correct horse", PASSWORD, "10.0.0.8", throttle=throttle).accepted


def test_the_wait_doubles_with_each_failure_up_to_a_cap_and_a_success_clears_it() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(base_delay_s=1.0, max_delay_s=8.0, clock=clock)
    waits = []
    for _ in range(6):
        result = check_login("wrong", PASSWORD, "10.0.0.7", throttle=throttle)
        assert not result.accepted and not result.throttled
        waits.append(result.wait_s)
        clock.now += result.wait_s - 0.01
        assert check_login("wrong", PASSWORD, "10.0.0.7", throttle=throttle).throttled  # too early
        clock.now += 0.01
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert check_login("correct horse", PASSWORD, "10.0.0.7", throttle=throttle).accepted
    assert len(throttle) == 0
    assert check_login("wrong", PASSWORD, "10.0.0.7", throttle=throttle).wait_s == 1.0  # a clean count


def test_the_user_name_is_part_of_the_key() -> None:
    throttle = LoginThrottle(clock=FakeClock())
    assert not check_login("wrong", PASSWORD, "10.0.0.7", user="ana", throttle=throttle).throttled
    assert check_login("wrong", PASSWORD, "10.0.0.7", user="ana", throttle=throttle).throttled
    assert not check_login("wrong", PASSWORD, "10.0.0.7", user="bo", throttle=throttle).throttled


def test_the_throttle_is_bounded_and_forgets_quiet_sources() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(max_keys=100, forget_s=600.0, clock=clock)
    for i in range(1000):
        check_login("wrong", PASSWORD, f"10.0.{i // 256}.{i % 256}", throttle=throttle)
    assert len(throttle) == 100
    for _ in range(3):
        clock.now += throttle.failed(("10.9.9.9", ""))
    clock.now += 601.0
    assert check_login("wrong", PASSWORD, "10.9.9.9", throttle=throttle).wait_s == 1.0


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", None, (), "203.0.113.5"),
        (None, None, (), "127.0.0.1"),  # Streamlit reports no address for a local client
        # Without trusted proxies the header is the client's word: ignored.
        ("10.1.1.1", "198.51.100.1", (), "10.1.1.1"),
        ("10.1.1.1", "198.51.100.1", ("10.0.0.0/8",), "198.51.100.1"),
        # A client cannot pick its address by writing the header itself: the right-most untrusted hop.
        ("10.1.1.1", "1.2.3.4, 198.51.100.1, 10.2.2.2", ("10.0.0.0/8",), "198.51.100.1"),
        ("10.1.1.1", "garbage, 10.2.2.2", ("10.0.0.0/8",), "garbage"),
        ("203.0.113.5", "198.51.100.1", ("10.0.0.0/8",), "203.0.113.5"),  # peer not a trusted proxy
    ],
)
def test_client_address(
    peer: str | None, forwarded: str | None, trusted: tuple[str, ...], expected: str
) -> None:
    assert client_address(peer, forwarded, trusted) == expected


def test_a_second_browser_session_shares_the_first_ones_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("STEEL_DASHBOARD_AUTH", "on")
    monkeypatch.setenv("STEEL_DASHBOARD_PASSWORD", PASSWORD.get_secret_value())
    monkeypatch.setattr(auth, "THROTTLE", LoginThrottle(base_delay_s=30.0))

    def attempt(password: str) -> AppTest:
        session = AppTest.from_file(str(APP), default_timeout=30)
        session.run()
        session.text_input[0].input(password)
        session.button[0].click().run()
        return session

    first = attempt("wrong")
    assert "Wrong password" in first.error[0].value
    second = attempt("correct horse")  # a new session from the same address, at once
    assert "Too many failed attempts" in second.error[0].value
    assert "steel_authenticated" not in second.session_state
