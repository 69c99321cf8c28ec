"""Dashboard pieces without services: overlays, login rules, the launcher, charts, image bytes."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import SecretStr

from dashboard import auth, charts, launch
from dashboard.config import DashboardSettings, is_loopback
from dashboard.overlays import MISSING_IMAGE_GREY, blank_frame, class_colour_hex, overlay_masks
from stack.service import free_port
from steelcore import exit_codes
from steelcore.postgres.engine import DASHBOARD_ROLE, role_url
from steelcore.postgres.frame_images import (
    decode_image_bytes,
    image_encoding,
    retention_days,
)
from steelcore.postgres.frame_reads import StripMark
from steelcore.postgres.live_reads import CameraRate
from steelcore.rle import encode
from steelcore.settings import Settings
from steelcore.severstal import CLASS_COLOURS_RGB
from steelcore.triton.model_names import VERSIONED_MODELS as VERSIONED


def _settings(**values: object) -> DashboardSettings:
    return DashboardSettings(_env_file=None, **values)  # type: ignore[call-arg]


# --- overlays ----------------------------------------------------------------------------------------


def test_overlay_colours_the_mask_in_its_class_colour_and_leaves_the_rest() -> None:
    image = np.full((32, 48), 100, np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 10:30] = 1
    out = overlay_masks(image, [(3, encode(mask))], alpha=0.5, outline=False)
    expected = np.rint(100 * 0.5 + np.asarray(CLASS_COLOURS_RGB[3]) * 0.5)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(out[16, 20], expected)
    assert np.array_equal(out[0, 0], [100, 100, 100])
    assert np.array_equal(out[mask == 0], np.full(((mask == 0).sum(), 3), 100))


def test_overlay_outline_is_drawn_opaque_on_the_mask_border() -> None:
    image = np.zeros((32, 48), np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 10:30] = 1
    out = overlay_masks(image, [(1, encode(mask))], alpha=0.2)
    assert tuple(out[8, 20]) == CLASS_COLOURS_RGB[1]  # top edge of the rectangle
    assert tuple(out[16, 20]) != CLASS_COLOURS_RGB[1]  # inside: blended only


def test_overlay_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        overlay_masks(np.zeros((4, 4, 3), np.uint8), [])
    with pytest.raises(ValueError, match="alpha"):
        overlay_masks(np.zeros((4, 4), np.uint8), [], alpha=1.5)
    with pytest.raises(ValueError):
        overlay_masks(np.zeros((4, 4), np.uint8), [(1, "10 100")])  # runs past the frame


def test_blank_frame_and_hex_colours() -> None:
    assert np.all(blank_frame(3, 5) == MISSING_IMAGE_GREY)
    r, g, b = CLASS_COLOURS_RGB[2]
    assert class_colour_hex(2) == f"#{r:02x}{g:02x}{b:02x}"


# --- login -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "address", "required"),
    [
        ("auto", "127.0.0.1", False),
        ("auto", "localhost", False),
        ("auto", "::1", False),
        ("auto", "0.0.0.0", True),
        ("auto", "", True),  # streamlit's default: every interface
        ("auto", "10.1.2.3", True),
        ("on", "127.0.0.1", True),
        ("off", "0.0.0.0", False),
    ],
)
def test_login_is_required_beyond_localhost_unless_forced(mode: str, address: str, required: bool) -> None:
    assert auth.login_required(_settings(dashboard_auth=mode), address) is required


def test_password_comes_from_settings_or_a_file_without_its_newline(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    from_file = auth.configured_password(_settings(dashboard_password_file=secret))
    assert from_file is not None and from_file.get_secret_value() == "hunter2"
    direct = auth.configured_password(_settings(dashboard_password=SecretStr("x y")))
    assert direct is not None and direct.get_secret_value() == "x y"
    assert auth.configured_password(_settings()) is None


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_password_file_is_refused(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text(content)
    with pytest.raises(auth.AuthConfigError, match="empty"):
        auth.configured_password(_settings(dashboard_password_file=secret))
    with pytest.raises(auth.AuthConfigError, match="cannot read"):
        auth.configured_password(_settings(dashboard_password_file=tmp_path / "missing"))


def test_a_public_dashboard_without_a_password_does_not_start() -> None:
    with pytest.raises(auth.AuthConfigError, match="needs a password"):
        auth.require_password(_settings(), "0.0.0.0")
    assert auth.require_password(_settings(), "127.0.0.1") is None


def test_password_comparison() -> None:
    expected = SecretStr("correct horse")
    assert auth.password_matches("correct horse", expected)
    assert not auth.password_matches("correct hors", expected)
    assert not auth.password_matches("", expected)
    assert "correct" not in repr(_settings(dashboard_password=expected))  # never printed


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("example.com") and not is_loopback("192.168.0.1")


# --- launcher -------------------------------------------------------------------------------------


def test_streamlit_command_is_headless_and_private_by_default() -> None:
    cmd = launch.streamlit_command("127.0.0.1", 8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    options = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert options["--server.headless"] == "true"
    assert options["--browser.gatherUsageStats"] == "false"
    assert (options["--server.address"], options["--server.port"]) == ("127.0.0.1", "8765")


def test_launch_refuses_a_public_address_without_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("STEEL_DASHBOARD_PASSWORD", "STEEL_DASHBOARD_PASSWORD_FILE", "STEEL_DASHBOARD_AUTH"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    assert launch.run(parser.parse_args(["--address", "0.0.0.0", "--no-db-setup"])) == exit_codes.BAD_INPUT
    assert "needs a password" in capsys.readouterr().err
    assert launch.run(parser.parse_args(["--port", "0", "--no-db-setup"])) == exit_codes.BAD_INPUT


def test_role_urls_swap_the_user_and_keep_the_database() -> None:
    url = role_url("postgresql://postgres:secret@db.example:5432/steel", DASHBOARD_ROLE)
    assert url == f"postgresql+psycopg://{DASHBOARD_ROLE}@db.example:5432/steel"


# --- charts --------------------------------------------------------------------------------------


def test_strip_map_places_each_defect_along_and_across_the_coil() -> None:
    marks = [StripMark(1, 3, 12.5, 400.0, 1600, 900, 0.5), StripMark(2, 1, 40.0, 1200.0, 1600, 50, 0.1)]
    spec = charts.strip_map(marks, "K1").to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert [(r["along_m"], r["across"], r["class"]) for r in rows] == [
        (12.5, 0.25, charts.class_label(3)),
        (40.0, 0.75, charts.class_label(1)),
    ]
    colours = spec["encoding"]["color"]["scale"]
    assert colours["range"][colours["domain"].index(charts.class_label(3))] == class_colour_hex(3)


def test_rates_chart_shows_percentages() -> None:
    spec = charts.rates_chart([CameraRate("L1", "C1", 2, 40, 10)]).to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert rows[0]["rate_pct"] == pytest.approx(25.0)
    assert CameraRate("L1", "C1", 2, 0, 0).rate == 0.0


# --- stored image bytes ---------------------------------------------------------------------------


def test_image_encoding_is_told_from_the_bytes() -> None:
    pixels = (np.arange(8 * 12) % 251).astype(np.uint8).reshape(8, 12)
    jpeg = cv2.imencode(".jpg", pixels)[1].tobytes()
    png = cv2.imencode(".png", pixels)[1].tobytes()
    assert image_encoding(jpeg, 8, 12) == "jpeg"
    assert image_encoding(png, 8, 12) == "png"
    assert image_encoding(pixels.tobytes(), 8, 12) == "raw"
    assert np.array_equal(decode_image_bytes(png, "png", 8, 12), pixels)
    assert np.array_equal(decode_image_bytes(pixels.tobytes(), "raw", 8, 12), pixels)
    with pytest.raises(ValueError, match="neither"):
        image_encoding(b"\x00" * 10, 8, 12)
    with pytest.raises(ValueError, match="expected 8x13"):
        decode_image_bytes(png, "png", 8, 13)
    with pytest.raises(ValueError, match="empty"):
        image_encoding(b"", 8, 12)


def test_retention_comes_from_settings() -> None:
    assert retention_days(Settings(frame_image_retention_days=3)) == 3.0
    assert retention_days(Settings()) == Settings.model_fields["frame_image_retention_days"].default


def test_stopping_the_launcher_stops_the_server(tmp_path: Path) -> None:
    # A stand-in server (a sleeper) supervised as `steel dashboard` supervises streamlit.
    pid_file = tmp_path / "server.pid"
    script = (
        "import subprocess, sys\n"
        "from dashboard.launch import _supervise\n"
        "server = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(server.pid))\n"
        "sys.exit(_supervise(server))\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the launcher did not start its server"
        time.sleep(0.05)
    server_pid = int(pid_file.read_text())
    time.sleep(0.5)  # the launcher installs its handler right after writing the file
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=20) == exit_codes.OK
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)  # reaped: gone, not a zombie


# --- the app without a database ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("db_url", "message"),
    [
        (None, "No defect database: no postgres URL"),
        (f"postgresql+psycopg://steel_dashboard@127.0.0.1:{free_port()}/steel", "unreachable"),
    ],
    ids=["not configured", "refused"],
)
def test_each_page_reports_a_missing_database_instead_of_failing(
    db_url: str | None, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from streamlit.testing.v1 import AppTest

    for name in [n for n in os.environ if n.startswith("STEEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("STEEL_RUN_DIR", str(tmp_path))  # no stack.json there
    monkeypatch.setenv("STEEL_DASHBOARD_AUTH", "off")
    if db_url is not None:
        monkeypatch.setenv("STEEL_DASHBOARD_DB_URL", db_url)
    at = AppTest.from_file(str(Path(launch.APP)), default_timeout=30).run()
    for page in ("history_page.py", "health_page.py", None):
        if page is not None:
            at.switch_page(page).run()
        assert not at.exception, at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_triton_states_of_a_version_name_what_is_not_ready() -> None:
    from dashboard.models_section import triton_states

    ready = [{"name": m, "version": "2", "state": "READY", "reason": ""} for m in VERSIONED]
    assert triton_states(ready, 2) == "loaded"
    assert triton_states(ready, 3) == "not loaded"
    assert triton_states(None, 2) == "?"
    broken = [*ready[:3], {"name": "steel_cascade", "version": "2", "state": "UNAVAILABLE", "reason": "bad"}]
    assert triton_states(broken, 2) == "steel_cascade UNAVAILABLE (bad)"
    unloaded = [row | {"state": "UNAVAILABLE", "reason": "unloaded"} for row in ready]
    assert triton_states(unloaded, 2) == "UNAVAILABLE (unloaded)"


def test_audit_summary_reads_promotion_and_shadow_figures() -> None:
    from dashboard.models_section import audit_summary

    assert audit_summary(None) == ""
    assert audit_summary({"share": 0.1}) == "share 10%"
    promote = {
        "shadowed_frames": 80,
        "verdicts": {"production": {"pairs": 12, "f1": 0.5}, "shadow": {"pairs": 12, "f1": None}},
        "agreement": {"1": {"mean_dice": 0.5}, "2": {"mean_dice": 1.0}, "3": {"mean_dice": None}},
    }
    assert audit_summary(promote) == (
        "F1 candidate - vs production 0.500, 12 verdicts, 80 shadowed frames, mean Dice 0.750"
    )
