"""Alembic environment of the defect database; run it through workers.db_migrate."""
