"""The embedded Triton Inference Server: one ``tritonserver`` process from the nvidia-pytriton wheel
(made runnable by stack.triton_wheel), serving a mutable copy of the given repository
(stack.serving_repository).

The server runs in explicit model-control mode (``--load-model=*`` loads everything at start), so
``steel models`` (stack.model_lifecycle) loads and unloads versions with the model control API.

A machine that cannot run the binary (no ``libpython3.11.so.1.0``, wheel missing) gets an
EmbeddedTritonUnavailableError (stack.triton_errors) that says how to point the workers at an
external server with ``STEEL_TRITON_URL`` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from stack.serving_repository import default_serving_repository, prepare_serving_repository
from stack.triton_addresses import TritonAddresses
from stack.triton_errors import TritonError
from stack.triton_shm import SHM_DIR, clean_stale_shm
from stack.triton_wheel import assemble_server, preflight, server_environment

log = logging.getLogger(__name__)

# Segmenter probabilities are 6.5 MB per frame; growing the python backend's shared memory in
# the default 1 MB steps would remap it several times per batch.
_SHM_DEFAULT_BYTES = 64 * 1024 * 1024
_SHM_GROWTH_BYTES = 64 * 1024 * 1024
_POLL_S = 0.25
_LOG_TAIL_CHARS = 3000
# How long the server waits for open connections and in-flight requests after SIGTERM.
_EXIT_TIMEOUT_S = 5


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class TritonServer(TritonAddresses):
    """One embedded ``tritonserver`` process serving ``repository``.

    ``start`` returns once the server is live and every model in ``wait_for`` is ready;
    ``stop`` sends SIGTERM, waits, and kills the process group after a timeout. Usable as a
    context manager.
    """

    def __init__(
        self,
        run_dir: Path,
        repository: Path,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        *,
        wait_for: Sequence[str] = ("steel_ensemble",),
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        stop_timeout_s: float = 20.0,
        serving_repository: Path | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        # ``repository`` is the source; the server serves ``self.repository``, a copy it may change.
        self.source_repository = Path(repository).resolve()
        self.repository = Path(serving_repository or default_serving_repository(self.run_dir)).resolve()
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.wait_for = tuple(wait_for)
        self.host = host
        self.extra_args = tuple(extra_args)
        self.stop_timeout_s = stop_timeout_s
        self.work_dir = self.run_dir / "triton"
        self.log_path = self.work_dir / "tritonserver.log"
        self.pid_path = self.work_dir / "tritonserver.pid"
        # A per-server prefix keeps two servers on one machine (tests beside a demo) apart;
        # it still matches SHM_GLOB so stale regions are found after a crash.
        self.shm_prefix = f"triton_python_backend_shm_region_steel{grpc_port}_"
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # --- life --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60) -> None:
        """Start the server and wait until it and the ``wait_for`` models are ready."""
        if self._process is not None and self._process.poll() is None:
            raise TritonError(f"server already running (pid {self._process.pid})")
        if not self.source_repository.is_dir() and not self.repository.is_dir():
            raise ValueError(f"model repository {self.source_repository} does not exist")
        if self.source_repository.is_dir():
            missing = [
                name
                for name in self.wait_for
                if not (self.source_repository / name / "config.pbtxt").is_file()
            ]
            if missing:
                raise ValueError(
                    f"model repository {self.source_repository} has no model {', '.join(missing)}"
                )
            prepare_serving_repository(self.source_repository, self.repository)
        server_dir = assemble_server(self.work_dir)
        env = server_environment()
        preflight(server_dir, env)
        clean_stale_shm()
        command = self._command(server_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "starting tritonserver on %s (HTTP %d, gRPC %d, metrics %d); log %s",
            self.repository,
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            self.log_path,
        )
        began = time.monotonic()
        with self.log_path.open("wb") as log_file:
            # A session of its own: Ctrl-C in the terminal reaches us, not the server, so the
            # server is stopped in order (SIGTERM, wait, kill) rather than half-killed.
            self._process = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._process.pid}\n")
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        log.info("tritonserver ready in %.1f s", self.startup_s)

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL the server's process group.

        ``graceful=False`` skips the SIGTERM: Triton unloads its models one poll second at a time
        (4-6 s for this repository), which a caller with nothing in flight (a test's teardown)
        need not wait for."""
        process, self._process = self._process, None
        if process is None:
            return
        if graceful and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0f s; killing it", self.stop_timeout_s)
        # The python-backend stubs are the server's children, in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        for region in SHM_DIR.glob(self.shm_prefix + "*"):
            with contextlib.suppress(FileNotFoundError):
                region.unlink()

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def live(self) -> bool:
        return _http_ok(f"http://{self.http_url}/v2/health/live")

    def ready(self) -> bool:
        """Server ready and every ``wait_for`` model ready."""
        if not _http_ok(f"http://{self.http_url}/v2/health/ready"):
            return False
        return all(_http_ok(f"http://{self.http_url}/v2/models/{name}/ready") for name in self.wait_for)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------------
    def _command(self, server_dir: Path) -> list[str]:
        return [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--cache-directory={server_dir / 'caches'}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            *self._model_control(),
            f"--exit-timeout-secs={_EXIT_TIMEOUT_S}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={_SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={_SHM_GROWTH_BYTES}",
            *self.extra_args,
        ]

    def _model_control(self) -> list[str]:
        """Explicit control, everything loaded at start: `steel models` loads and unloads versions
        without a restart. Left to ``extra_args`` when they choose (Triton refuses --load-model=*
        beside another --load-model)."""
        if any(a.startswith(("--model-control-mode", "--load-model")) for a in self.extra_args):
            return []
        return ["--model-control-mode=explicit", "--load-model=*"]

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise TritonError(
                    f"tritonserver exited with code {code} during startup; log {self.log_path}:\n"
                    + self.log_tail()
                )
            if self.ready():
                return
            time.sleep(_POLL_S)
        raise TritonError(
            f"tritonserver not ready after {timeout_s:.0f} s (models {', '.join(self.wait_for)}); "
            f"log {self.log_path}:\n" + self.log_tail()
        )


def stop_recorded(run_dir: Path, timeout_s: float = 20.0) -> bool:
    """Stop a server another process started under ``run_dir`` (its pid file); True if one ran."""
    pid_path = Path(run_dir) / "triton" / "tritonserver.pid"
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        command = b""
    if b"tritonserver" not in command:  # gone, or the pid was reused by another program
        pid_path.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(_POLL_S)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    pid_path.unlink(missing_ok=True)
    return True
