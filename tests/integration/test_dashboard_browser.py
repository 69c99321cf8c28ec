"""End to end: `streamlit run` of the dashboard against the embedded Postgres and Redis, driven by
headless Chromium (Debian's package, via Playwright; scripts/ensure_chromium.sh installs it).

Loads each page, checks its key elements, proves the live page refreshes itself without a reload,
clicks a feedback button and finds the verdict in the database, and saves a screenshot of each
page. Screenshots go to the test's temporary folder, and also to $STEEL_SCREENSHOTS_DIR when set
(`STEEL_SCREENSHOTS_DIR=docs pytest tests/integration/test_dashboard_browser.py` refreshes the
README's images).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dashboard_seed import RECENT_COIL, seed, seed_models
from sqlalchemy import Engine, select

from dashboard.launch import streamlit_command
from stack.demo_screenshots import chromium_path
from stack.service import free_port
from steelcore.paths import REPO_ROOT
from steelcore.postgres import schema
from steelcore.postgres.engine import DASHBOARD_ROLE, FEEDBACK_ROLE, role_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 60.0
WAIT_MS = 30_000
VIEWPORT = {"width": 1400, "height": 1000}
SCREENSHOT_HEIGHTS = {"live": 2250, "history": 1950, "health": 2500}


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return chromium_path()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright for Python: pip install playwright", pytrace=False)
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def server(
    dashboard_db_url: str,
    dashboard_owner: Engine,
    stack_run_dir: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The dashboard served as `steel dashboard` serves it, on a free port; yields its base URL."""
    now = datetime.now(UTC)
    # The health page's Models section: versions, shadow, audit.
    seed_models(dashboard_owner, seed(dashboard_owner, now), now)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEEL_")}
    env.update(
        STEEL_DASHBOARD_DB_URL=role_url(dashboard_db_url, DASHBOARD_ROLE),
        STEEL_DASHBOARD_FEEDBACK_DB_URL=role_url(dashboard_db_url, FEEDBACK_ROLE),
        STEEL_RUN_DIR=str(stack_run_dir),
        OMP_NUM_THREADS="1",
    )
    log_path = tmp_path_factory.mktemp("dashboard") / "streamlit.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            streamlit_command("127.0.0.1", port), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process, log_path)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(base: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"streamlit exited {process.returncode}: {log_path.read_text()[-2000:]}", pytrace=False
            )
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(
        f"streamlit not healthy after {START_TIMEOUT_S:g} s: {log_path.read_text()[-2000:]}", pytrace=False
    )


@pytest.fixture(scope="module")
def browser(playwright_api, chromium: str):
    # The system browser: Playwright's own browser download is not available here.
    instance = playwright_api.chromium.launch(
        executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
    )
    yield instance
    instance.close()


def _screenshot(page, name: str, tmp_path: Path) -> Path:
    page.set_viewport_size({"width": VIEWPORT["width"], "height": SCREENSHOT_HEIGHTS[name]})
    page.wait_for_timeout(800)  # let charts lay out at the new size
    path = tmp_path / f"dashboard_{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000  # a rendered page, not an empty shell
    target = os.environ.get("STEEL_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def _updated_caption(page) -> str:
    return page.get_by_text("Updated ").first.inner_text()


def test_every_page_renders_in_a_real_browser(
    server: str, browser, dashboard_owner: Engine, redis_url: str, tmp_path: Path
) -> None:
    page = browser.new_page(viewport=VIEWPORT)

    # Live: rates, alarms, overlays and the coil map; it refreshes without reloading the page.
    page.goto(f"{server}/")
    page.get_by_text(f"Current coil {RECENT_COIL}").wait_for(timeout=WAIT_MS)
    page.get_by_text("Defect rate per camera and class").wait_for(timeout=WAIT_MS)
    page.locator("[data-testid='stImage'] img").nth(2).wait_for(timeout=WAIT_MS)
    assert page.locator("[data-testid='stVegaLiteChart']").count() >= 2
    page.evaluate("window.__steelMarker = 'same page'")
    first = _updated_caption(page)
    page.wait_for_function(
        "(first) => [...document.querySelectorAll('[data-testid=stCaptionContainer]')]"
        ".some(e => e.innerText.startsWith('Updated ') && e.innerText !== first)",
        arg=first,
        timeout=WAIT_MS,
    )
    assert page.evaluate("window.__steelMarker") == "same page"  # a fragment rerun, not a reload
    _screenshot(page, "live", tmp_path)

    # An operator confirms the newest alarm; the verdict lands in the feedback table.
    page.set_viewport_size(VIEWPORT)
    operator = page.get_by_role("textbox", name="Operator")
    operator.fill("e2e-operator")
    operator.press("Enter")
    confirm = page.get_by_role("button", name="Confirm").first
    enabled = (
        "() => [...document.querySelectorAll('button')]"
        ".some(b => b.innerText.trim() === 'Confirm' && !b.disabled)"
    )
    page.wait_for_function(enabled, timeout=WAIT_MS)
    confirm.click()
    assert _wait_for_feedback(dashboard_owner, "e2e-operator") == "confirmed"

    # History: filters, the paged table, the frame viewer and the per-coil summary.
    page.goto(f"{server}/history")
    page.get_by_text("matching defects").wait_for(timeout=WAIT_MS)
    page.get_by_text("Per coil: defects per 100 m").wait_for(timeout=WAIT_MS)
    page.locator("[data-testid='stImage'] img").first.wait_for(timeout=WAIT_MS)
    for label in ("Export CSV", "Export Kaggle CSV", "Retraining dataset (zip)"):
        page.get_by_text(label, exact=True).first.wait_for(timeout=WAIT_MS)
    _screenshot(page, "history", tmp_path)

    # Health: the fixtures' Postgres and Redis are up; throughput from the frames table.
    page.set_viewport_size(VIEWPORT)
    drift = _raise_drift(redis_url, "L1/C2")
    page.goto(f"{server}/health")
    page.get_by_text("Throughput and latency").wait_for(timeout=WAIT_MS)
    page.get_by_text("Workers use").wait_for(timeout=WAIT_MS)
    page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=WAIT_MS)
    # Models: shadow v2 beside production v1, its figures against verdicts, the gate and the audit.
    page.get_by_text("shadow v2 against v1 on").wait_for(timeout=WAIT_MS)
    page.get_by_text("Against operator verdicts").wait_for(timeout=WAIT_MS)
    page.get_by_text("Promotion gate passes").wait_for(timeout=WAIT_MS)
    page.get_by_text("Audit trail").wait_for(timeout=WAIT_MS)
    page.get_by_text(f"Drift: {drift}").wait_for(timeout=WAIT_MS)
    _screenshot(page, "health", tmp_path)
    page.close()
    _clear_drift(redis_url)


def _raise_drift(redis_url: str, camera: str) -> str:
    """An inspection alarm episode for ``camera`` on the stream the embedded Redis grants the
    dashboard; its message."""
    import redis

    from steelcore.redis.inspection_alarms import InspectionAlarms
    from steelcore.settings import Settings
    from workers.drift_monitor import DriftEvent

    _clear_drift(redis_url)
    message = f"camera {camera}: frames 41 gray levels darker than the model knows; results unreliable"
    client = redis.Redis.from_url(redis_url)
    try:
        stream = Settings().inspection_alarm_stream
        InspectionAlarms(client, stream).publish(DriftEvent(camera, "raised", ("brightness",), message))
    finally:
        client.close()
    return message


def _clear_drift(redis_url: str) -> None:
    import redis

    from steelcore.settings import Settings

    stream = Settings().inspection_alarm_stream
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(stream, f"{stream}:active")
    finally:
        client.close()


def _wait_for_feedback(owner: Engine, operator: str, timeout_s: float = 15.0) -> str | None:
    deadline = time.monotonic() + timeout_s
    stmt = select(schema.feedback.c.verdict).where(schema.feedback.c.operator == operator)
    while time.monotonic() < deadline:
        with owner.connect() as conn:
            verdict = conn.execute(stmt).scalar_one_or_none()
        if verdict is not None:
            return verdict
        time.sleep(0.2)
    return None
