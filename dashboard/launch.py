"""`steel dashboard`: serve the Streamlit dashboard.

    steel dashboard                          # http://127.0.0.1:8501, no login
    steel dashboard --address 0.0.0.0 --password-file /run/secrets/dashboard   # login required

Before serving, on the embedded stack it brings the schema to head and creates the dashboard's
read-only and feedback logins (dashboard/prepare_database.py). Listening beyond localhost turns the
password login on (dashboard/auth.py); the dashboard refuses to start open there. The password
reaches the server through the environment, never the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from steelcore import exit_codes

if TYPE_CHECKING:
    from dashboard.config import DashboardSettings

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"
STOP_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dashboard.config import AuthMode

    parser.add_argument(
        "--address", help="address to listen on (default STEEL_DASHBOARD_ADDRESS or 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, help="port (default STEEL_DASHBOARD_PORT or 8501)")
    parser.add_argument(
        "--auth", choices=get_args(AuthMode), help="password login (default auto: on beyond localhost)"
    )
    parser.add_argument("--password-file", type=Path, metavar="FILE", help="file holding the login password")
    parser.add_argument(
        "--no-db-setup",
        action="store_true",
        help="do not migrate the embedded database or create the dashboard's roles first",
    )


def streamlit_command(address: str, port: int) -> list[str]:
    """The server's command line: headless, no usage statistics, no file watching."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
    ]


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from dashboard.auth import AuthConfigError, require_password
    from dashboard.config import DashboardSettings

    overrides = {
        "dashboard_address": args.address,
        "dashboard_port": args.port,
        "dashboard_auth": args.auth,
        "dashboard_password_file": args.password_file,
    }
    env_overrides = {f"STEEL_{k.upper()}": str(v) for k, v in overrides.items() if v is not None}
    try:
        settings = DashboardSettings(**{k: v for k, v in overrides.items() if v is not None})
        require_password(settings, settings.dashboard_address)
    except (AuthConfigError, ValidationError) as exc:
        print(f"steel dashboard: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    if not args.no_db_setup:
        status = _prepare_database(settings)
        if status != exit_codes.OK:
            return status

    command = streamlit_command(settings.dashboard_address, settings.dashboard_port)
    print(f"dashboard on http://{settings.dashboard_address}:{settings.dashboard_port}", flush=True)
    server = subprocess.Popen(command, env={**os.environ, **env_overrides})
    return _supervise(server)


def _supervise(server: subprocess.Popen) -> int:
    """Wait for the server; SIGTERM (a service manager stopping us) and Ctrl-C stop it too, so it
    never outlives this process."""
    stopping = False

    def _forward(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        server.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, _forward)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        _stop(server)
        return exit_codes.INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return exit_codes.OK if code == 0 or stopping else exit_codes.FAILURE


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _prepare_database(settings: DashboardSettings) -> int:
    from sqlalchemy.exc import OperationalError

    from dashboard.prepare_database import prepare_embedded_database
    from steelcore.service_urls import ServiceUnavailableError, is_embedded

    if not is_embedded("postgres", settings):
        if not (settings.dashboard_db_url and settings.dashboard_feedback_db_url):
            log.warning(
                "external database: the dashboard logs in as steel_dashboard / steel_feedback; create them "
                "with `python -m dashboard.prepare_database roles` (as the owner) or set "
                "STEEL_DASHBOARD_DB_URL and STEEL_DASHBOARD_FEEDBACK_DB_URL"
            )
        return exit_codes.OK
    try:
        prepare_embedded_database(settings)
    except ServiceUnavailableError as exc:
        print(f"steel dashboard: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        print(f"steel dashboard: cannot reach the defect database: {reason}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    return exit_codes.OK
