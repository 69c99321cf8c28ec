"""Temporary folders other users may pass, for the embedded Postgres that root runs as another user.

Importable from every test folder: pytest puts tests/ on sys.path because tests/conftest.py lives there.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def passable_temp_dir(prefix: str) -> Iterator[Path]:
    """A new folder under the system's temp folder, mode 0755, removed with its contents on exit."""
    # Not under pytest's basetemp: as root, PostgreSQL runs as another user that must traverse the
    # folders above its data, and every pytest session starting meanwhile (another checkout, a
    # second terminal) resets /tmp/pytest-of-<user> to mode 0700.
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    # mkdtemp makes it 0700; as root the server user must pass it to keep its data here (else
    # stack.postgres_server keeps the data under embedded_postgres_home, where it would outlive
    # the test). Only this folder, made by the test, is opened; nothing above it is changed.
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
