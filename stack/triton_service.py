"""Triton as one of the embedded stack's services: stack.triton_server.TritonServer behind the
EmbeddedService life (pidfile, bind retry, health, stop), so `steel up/down/status` treat it like
Kafka, Postgres and Redis."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
from pathlib import Path
from typing import Any

from stack.processes import terminate
from stack.service import LOCALHOST, EmbeddedService, port_accepts
from stack.service_errors import AddressInUseError, ServiceStartError
from stack.triton_addresses import TritonAddresses
from steelcore.triton.readiness import probe_triton_http


def triton_launcher_available() -> bool:
    return importlib.util.find_spec("stack.triton_server") is not None


def first_triton_error(log_text: str, max_chars: int = 300) -> str:
    """The line of a tritonserver log that says why it did not start ('' when none does)."""
    lines = log_text.splitlines()
    failed = [line for line in lines if "failed to load" in line]
    fatal = [line for line in lines if line.startswith("error:")]
    line = failed[0] if failed else (fatal[-1] if fatal else "")
    # Drop the "E1126 12:00:00.013655 25870 model_lifecycle.cc:642] " prefix.
    message = line.split('] "', 1)[-1].rstrip('"') if '] "' in line else line
    return message.split("\\n", 1)[0][:max_chars]


class TritonService(TritonAddresses, EmbeddedService):
    """Wraps stack.triton_server.TritonServer (it builds the command line and owns its log)."""

    name = "triton"
    stop_timeout_s = 20.0

    def __init__(
        self,
        run_dir: Path,
        repository: Path,
        model: str,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        protocol: str = "grpc",
        host: str = LOCALHOST,
        serving_repository: Path | None = None,
    ) -> None:
        super().__init__(run_dir, grpc_port, host)
        self.repository = Path(repository)
        # None: TritonServer serves a copy under run_dir (stack.serving_repository).
        self.serving_repository = serving_repository
        self.model = model
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.protocol = protocol
        self._server: Any = None

    @property
    def url(self) -> str:
        return self.grpc_url if self.protocol == "grpc" else self.http_url

    @property
    def log_path(self) -> Path:
        # TritonServer writes its own log here (run_dir/triton/tritonserver.log).
        return self.service_dir / "tritonserver.log"

    def command(self) -> list[str]:
        raise NotImplementedError("TritonServer builds the tritonserver command line")

    def probe(self, timeout_s: float = 2.0) -> str | None:
        return probe_triton_http(self.http_url, self.model, timeout_s)

    def start(self, timeout_s: float = 60.0) -> None:
        super().start(timeout_s)

    def _start_once(self, timeout_s: float) -> None:
        from stack.triton_errors import TritonError
        from stack.triton_server import TritonServer

        busy = [
            port
            for port in (self.http_port, self.grpc_port, self.metrics_port)
            if port_accepts(self.host, port)
        ]
        if busy:
            raise AddressInUseError(self.name, f"ports {busy} on {self.host} are in use", self.log_path)
        server = TritonServer(
            self.run_dir,
            self.repository,
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            wait_for=(self.model,),
            host=self.host,
            serving_repository=self.serving_repository,
        )
        try:
            server.start(timeout_s)
        except (TritonError, ValueError, OSError) as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            # TritonServer names its log itself; ServiceStartError appends it once.
            reason = re.sub(r"[;,]?\s*log \S+:?$", "", first_line)
            cause = first_triton_error(self.log_tail(max_bytes=1_000_000))
            raise ServiceStartError(
                self.name, f"{reason}: {cause}" if cause else reason, server.log_path
            ) from exc
        self._server = server
        self.write_pidfile(server.pid)

    def stop(self, timeout_s: float | None = None) -> bool:
        if self._server is not None:
            was_running = bool(self._server.running())
            self._server.stop()
            self._server = None
            self.pidfile.unlink(missing_ok=True)
            return was_running
        timeout = self.stop_timeout_s if timeout_s is None else timeout_s
        proc = self.process()
        if proc is not None:
            # SIGTERM to the server only (it shuts its python stubs down), then kill what is left of
            # its process group (it leads its own session, so the group id is its pid).
            terminate(proc, timeout, whole_group=False)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        if triton_launcher_available():
            from stack.triton_server import stop_recorded

            # Also stops a server `steel triton` started under this run dir; removes its pidfile.
            stop_recorded(self.run_dir, timeout_s=timeout)
        return proc is not None
