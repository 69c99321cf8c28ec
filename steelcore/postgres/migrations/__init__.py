"""Alembic environment of the defect database; run it through steelcore.postgres.migrate."""
