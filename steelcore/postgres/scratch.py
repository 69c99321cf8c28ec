"""A throw-away database on a Postgres server, for tests and benchmarks: each run gets its own,
so runs in parallel on one server never see each other's rows.

Needs a login allowed to CREATE DATABASE (the embedded server's superuser).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.engine import make_url

from steelcore.postgres.engine import create_db_engine, sqlalchemy_url


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """Create an empty database named ``{prefix}_<random>``, yield its URL, drop it afterwards
    (with FORCE: a test that left a connection open must not keep it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_db_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # a generated name, never input
        url = make_url(sqlalchemy_url(server_url)).set(database=name)
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
