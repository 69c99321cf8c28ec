"""Prepare the defect database for the dashboard: the schema at head and its two logins
(steelcore.postgres.roles). `steel dashboard` runs ``prepare_embedded_database`` on the embedded
stack; elsewhere a DBA runs, as the tables' owner:

    python -m dashboard.prepare_database roles        # as STEEL_POSTGRES_URL

The logins' passwords come from STEEL_DASHBOARD_DB_URL / STEEL_DASHBOARD_FEEDBACK_DB_URL, never
from the command line, where every user of the machine can read them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dashboard.config import DashboardSettings
from steelcore.postgres.engine import DASHBOARD_ROLE, FEEDBACK_ROLE, command_database_url, url_password
from steelcore.postgres.migrate import upgrade
from steelcore.postgres.roles import ensure_dashboard_roles


def prepare_embedded_database(settings: DashboardSettings) -> None:
    """For `steel dashboard` on the embedded stack: bring the schema to head and create the roles,
    as the embedded superuser. Skipped when both dashboard URLs are configured."""
    if settings.dashboard_db_url and settings.dashboard_feedback_db_url:
        return
    from steelcore.service_urls import postgres_url

    admin = postgres_url(settings)
    upgrade(admin)
    ensure_dashboard_roles(admin)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard.prepare_database", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    roles = sub.add_parser("roles", help=f"create {DASHBOARD_ROLE} and {FEEDBACK_ROLE} (passwords from env)")
    roles.add_argument(
        "url",
        nargs="?",
        help="URL without a password of a role that owns the tables (default: STEEL_POSTGRES_URL)",
    )
    args = parser.parse_args(argv)
    settings = DashboardSettings()
    admin_url = command_database_url(parser.prog, args.url)
    if isinstance(admin_url, int):
        return admin_url
    ensure_dashboard_roles(
        admin_url,
        dashboard_password=url_password(settings.dashboard_db_url),
        feedback_password=url_password(settings.dashboard_feedback_db_url),
    )
    print(f"login roles {DASHBOARD_ROLE} and {FEEDBACK_ROLE} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
