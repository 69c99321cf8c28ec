"""Is a Postgres server up: the probe of `steel status`, the embedded launcher and the health page."""

from __future__ import annotations


def probe_dsn(dsn: str, timeout_s: float = 2.0) -> str:
    """Connect, run SELECT 1 and return the server version; raises psycopg.Error on failure."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s)), autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0]}" if row else "PostgreSQL"
