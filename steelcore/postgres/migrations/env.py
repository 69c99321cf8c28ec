"""Alembic environment: runs on a connection handed over by steelcore.postgres.migrate, or on a URL.

steelcore.postgres.migrate.upgrade() opens the transaction, takes an advisory lock so that workers starting
together migrate one at a time, and passes the connection in ``config.attributes["connection"]``.
Offline (``--sql``) mode renders the DDL as a script for a DBA.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from steelcore.postgres.engine import create_db_engine
from steelcore.postgres.schema import metadata

config = context.config


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_db_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
