"""The processes `steel demo` runs: each a `steel` subcommand with its output in its own log file.

Children start in sessions of their own, so a Ctrl-C in the terminal reaches only the demo, which
then stops them in its chosen order (SIGTERM, a grace period, then SIGKILL of the whole group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

STEEL = (sys.executable, "-m", "steelcore.cli")


class Child:
    def __init__(
        self, name: str, args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = [*STEEL, *args]
        self.log_path = log_dir / f"{name}.log"
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._terminating = False
        # Where this run's output starts: the log file keeps earlier runs' (appended), and a line of
        # theirs must never be taken for this child's ("assigned" of a previous demo's worker let
        # the cameras start seconds before the workers had joined).
        self._log_offset = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"$ {' '.join(self.command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        """This run's output (since ``start``), not that of earlier runs in the same file."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        """Ask the child to finish (SIGTERM) once. A second SIGTERM could reach a child that is
        already exiting, after its handler is gone, and kill it with the batch committed but -15."""
        if self.proc is not None and self.proc.poll() is None and not self._terminating:
            self._terminating = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM (once), wait up to ``timeout_s``, then SIGKILL the child's process group; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            code = self.wait(timeout_s)
            if code is not None:
                return code
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the child leads its own session
        return self.proc.wait()


def wait_for_log(children: Sequence[Child], text: str, timeout_s: float) -> list[Child]:
    """Wait until every child's log contains ``text``; returns those whose log does not (or that died)."""
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    while pending and time.monotonic() < deadline:
        pending = [c for c in pending if text not in c.log_text() and c.running]
        if pending:
            time.sleep(0.25)
    return [c for c in children if text not in c.log_text()]
