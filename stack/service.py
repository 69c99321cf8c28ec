"""The life of one embedded service: start as a daemon, prove it healthy, find it again, stop it.

Every service keeps its state under ``run_dir/<name>/``: ``service.pid`` (pid and process start
time, so a recycled pid is never mistaken for ours), ``service.log`` and its data. The process
runs in its own session, so it outlives the `steel up` that started it and any later process
can stop it from the pidfile alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path

import psutil

from stack.processes import PidRecord, process_tree_rss, terminate
from stack.service_errors import (
    BIND_RETRY_ATTEMPTS,
    BIND_RETRY_FIRST_DELAY_S,
    AddressInUseError,
    ServiceStartError,
    retry_on_address_in_use,
    start_failure,
)
from steelcore.service_health import Health

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
PIDFILE_NAME = "service.pid"
LOGFILE_NAME = "service.log"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class EmbeddedService(ABC):
    """One local service process started from a pip wheel.

    Subclasses say how to prepare the data folder, which command to run, what URL clients use and
    how to probe it. The base class supplies the daemon life: pidfile, log, health wait, bind retry
    and stop.
    """

    name: str = "service"
    stop_timeout_s: float = 10.0
    stop_signal: int = signal.SIGTERM
    # False where the service manages its own children and they must not see the signal.
    stop_whole_group: bool = True
    bind_retry_attempts: int = BIND_RETRY_ATTEMPTS
    bind_retry_first_delay_s: float = BIND_RETRY_FIRST_DELAY_S

    def __init__(self, run_dir: Path, port: int, host: str = LOCALHOST) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.port = port
        self.host = host
        self._popen: subprocess.Popen[bytes] | None = None

    # ---- what a subclass provides -------------------------------------------------------
    @property
    @abstractmethod
    def url(self) -> str:
        """The URL clients connect with (may contain a secret: print it through redact_url)."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line of the service process."""

    @abstractmethod
    def probe(self, timeout_s: float = 2.0) -> str | None:
        """Talk to the service like a client would; return its version if cheap. Raises on failure."""

    def prepare(self) -> None:
        """Create the data folder and config files before the first start."""
        self.service_dir.mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # ---- files --------------------------------------------------------------------------
    @property
    def service_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def pidfile(self) -> Path:
        return self.service_dir / PIDFILE_NAME

    @property
    def log_path(self) -> Path:
        return self.service_dir / LOGFILE_NAME

    def read_pidfile(self) -> PidRecord | None:
        try:
            raw = json.loads(self.pidfile.read_text())
            return PidRecord(pid=int(raw["pid"]), create_time=float(raw["create_time"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable pidfile %s (%s); treating it as stale", self.name, self.pidfile, exc)
            return None

    def write_pidfile(self, pid: int) -> None:
        record = PidRecord.of(pid)
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(self.pidfile)

    def process(self) -> psutil.Process | None:
        """The running service process named by the pidfile, if any."""
        record = self.read_pidfile()
        return record.process() if record is not None else None

    def remove_stale_pidfile(self) -> bool:
        """Delete the pidfile if its process is gone; True when one was removed."""
        if self.pidfile.exists() and self.process() is None:
            self.pidfile.unlink(missing_ok=True)
            return True
        return False

    # ---- life ---------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        """Start the service (or adopt the one already running) and wait until it answers."""
        if self.process() is not None:
            log.info("%s already running (pid %s); checking its health", self.name, self.read_pidfile())
            self.wait_until_healthy(timeout_s)
            return
        self.remove_stale_pidfile()
        self.prepare()
        retry_on_address_in_use(
            lambda: self._start_once(timeout_s),
            attempts=self.bind_retry_attempts,
            first_delay_s=self.bind_retry_first_delay_s,
        )

    def _start_once(self, timeout_s: float) -> None:
        if port_accepts(self.host, self.port):
            # Something else listens there; it may be a previous run still shutting down.
            raise AddressInUseError(self.name, f"port {self.host}:{self.port} is in use", self.log_path)
        # Measure the log before spawning: a process that fails at once may have written its
        # reason before wait_until_healthy looks, and that reason belongs in the error.
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.spawn()
        try:
            self.wait_until_healthy(timeout_s, log_offset=log_offset)
        except ServiceStartError:
            self.stop()
            raise

    def spawn(self) -> None:
        """Launch the process detached from the caller (own session) with output to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            self._popen = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.service_dir,
                env=self.environment(),
                start_new_session=True,
            )
        self.write_pidfile(self._popen.pid)

    def wait_until_healthy(self, timeout_s: float, log_offset: int | None = None) -> None:
        """Poll until probe() succeeds; raise ServiceStartError on exit or timeout.

        ``log_offset``: where this start's output begins in the log (default: its current end).
        """
        if log_offset is None:
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while True:
            if self.process() is None:
                raise start_failure(
                    self.name, "process exited", self.log_tail(since=log_offset), self.log_path
                )
            if port_accepts(self.host, self.port):
                try:
                    self.probe(timeout_s=min(2.0, max(0.2, deadline - time.monotonic())))
                    return
                except Exception as exc:  # any client error means "not ready yet"
                    last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    self.name, f"not healthy after {timeout_s:.0f} s ({last_error})", self.log_path
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the process named by the pidfile; True when one was running."""
        proc = self.process()
        was_running = proc is not None
        if proc is not None:
            terminate(
                proc,
                self.stop_timeout_s if timeout_s is None else timeout_s,
                sig=self.stop_signal,
                whole_group=self.stop_whole_group,
            )
        if self._popen is not None:
            # Reap our own child so it does not linger as a zombie in a long-lived caller (tests).
            self._popen.wait()
            self._popen = None
        self.pidfile.unlink(missing_ok=True)
        return was_running

    def health(self) -> Health:
        """Whether the process is alive and answers a client probe."""
        proc = self.process()
        if proc is None:
            return Health(self.name, up=False, url=self.url, detail="not running")
        rss = process_tree_rss(proc)
        try:
            version = self.probe()
        except Exception as exc:  # reported, not raised: status shows every service
            return Health(
                self.name,
                up=False,
                url=self.url,
                pid=proc.pid,
                rss_bytes=rss,
                detail=f"{type(exc).__name__}: {exc}",
            )
        return Health(self.name, up=True, url=self.url, pid=proc.pid, version=version, rss_bytes=rss)

    def log_tail(self, since: int = 0, max_bytes: int = 4000) -> str:
        """The end of the log written after byte offset ``since``."""
        try:
            with open(self.log_path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(since, size - max_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
