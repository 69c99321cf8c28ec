"""The embedded Triton Inference Server, started from the nvidia-pytriton wheel.

The wheel ships a complete ``tritonserver`` 2.51 with the python backend, but not in a
layout the server can use as is: the python backend needs the stub for our Python version
beside it, and the binaries find their libraries only through ``LD_LIBRARY_PATH``. So the
server is assembled once in a work folder under the run directory (``bin``, ``backends``,
``caches``, plus the 3.11 stub) and started from there. ``PATH`` starts with the venv's
``bin`` so the stub's embedded interpreter imports the venv's packages (torch, numpy<2,
steelcore).

The server runs in explicit model-control mode (``--load-model=*`` loads everything at start) and
serves a mutable copy of the given repository, ``<run_dir>/triton_repository`` unless told another
one: ``steel models`` (stack.model_lifecycle) adds versions there and loads them with the model
control API, and the git-tracked ``triton_models/`` is never written.

A machine that cannot run the binary (no ``libpython3.11.so.1.0``, wheel missing) gets a
:class:`EmbeddedTritonUnavailableError` that says how to point the workers at an external server
with ``STEEL_TRITON_URL`` instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from steelcore.errors import SteelError
from steelcore.triton.exceptions import TritonUnavailableError

log = logging.getLogger(__name__)

SHM_GLOB = "triton_python_backend_shm_region_*"
_SHM_DIR = Path("/dev/shm")
_STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# Segmenter probabilities are 6.5 MB per frame; growing the python backend's shared memory in
# the default 1 MB steps would remap it several times per batch.
_SHM_DEFAULT_BYTES = 64 * 1024 * 1024
_SHM_GROWTH_BYTES = 64 * 1024 * 1024
_POLL_S = 0.25
_LOG_TAIL_CHARS = 3000
# How long the server waits for open connections and in-flight requests after SIGTERM.
_EXIT_TIMEOUT_S = 5
SERVING_REPOSITORY = "triton_repository"
MANIFEST = "repository.json"


def default_serving_repository(run_dir: Path) -> Path:
    """Where an embedded server keeps the repository it serves (and the lifecycle rewrites)."""
    return Path(run_dir) / SERVING_REPOSITORY


def _holds_only_version_one(repository: Path) -> bool:
    versions = {p.name for p in repository.glob("*/*") if p.is_dir() and p.name.isdigit()}
    return versions <= {"1"}


def prepare_serving_repository(source: Path, serving: Path) -> Path:
    """Copy ``source`` to ``serving`` when absent; returns ``serving``.

    An existing copy is kept: it holds the versions the lifecycle registered. Only a copy still
    holding version 1 alone (no lifecycle change yet) whose manifest differs from the source's is
    replaced, so a re-export of the source (`steel export`) reaches the server.
    """
    source, serving = Path(source).resolve(), Path(serving).resolve()
    if source == serving:
        return serving
    if serving.is_dir():
        manifest, copied = source / MANIFEST, serving / MANIFEST
        same = manifest.is_file() and copied.is_file() and manifest.read_bytes() == copied.read_bytes()
        if same or not _holds_only_version_one(serving):
            return serving
        log.info("serving repository %s is an older copy of %s: copying again", serving, source)
        shutil.rmtree(serving)
    serving.parent.mkdir(parents=True, exist_ok=True)
    staging = serving.with_name(f".{serving.name}-copying")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__"))
    staging.rename(serving)
    return serving


class TritonError(SteelError, RuntimeError):
    """The embedded Triton server failed to start or stopped unexpectedly."""


class EmbeddedTritonUnavailableError(TritonError, TritonUnavailableError):
    """The embedded server cannot run on this machine (binary, libraries or stub missing): no Triton
    to talk to, the same verdict as an unreachable external one (steelcore.triton.exceptions)."""


def _external_hint() -> str:
    return (
        "Point the workers at an external Triton server instead, e.g. "
        "STEEL_TRITON_URL=triton-host:8001 (gRPC, the default protocol) or "
        "STEEL_TRITON_URL=triton-host:8000 with STEEL_TRITON_PROTOCOL=http, serving the "
        "repository written by `steel export --format onnx --repo OUT` (GPU) or triton_models/ (CPU)."
    )


def find_pytriton_root() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedTritonUnavailableError(
            "the nvidia-pytriton wheel is not installed (pip install 'resunet-steel[embedded]'). "
            + _external_hint()
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise EmbeddedTritonUnavailableError(f"no tritonserver binary in {root}. " + _external_hint())
    return root


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    """Shared libraries ``binary`` needs but the loader cannot find (empty if ldd is absent)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    out = subprocess.run([ldd, str(binary)], env=env, capture_output=True, text=True, check=False).stdout
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def shm_regions_in_use(shm_dir: Path = _SHM_DIR) -> set[Path]:
    """Files in ``shm_dir`` that some live process has mapped or open."""
    prefix = f"{shm_dir.resolve()}/"
    in_use: set[Path] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (proc / "maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith(prefix):
                    in_use.add(Path(fields[5].removesuffix(" (deleted)")))
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(prefix):
                        in_use.add(Path(target))
    return in_use


def clean_stale_shm(shm_dir: Path = _SHM_DIR) -> list[Path]:
    """Remove python-backend shared-memory regions left behind by crashed stubs.

    Only regions no live process holds are removed, so a second server (a test run beside a
    demo) keeps its own.
    """
    candidates = sorted(shm_dir.glob(SHM_GLOB))
    if not candidates:
        return []
    in_use = shm_regions_in_use(shm_dir)
    removed: list[Path] = []
    for path in candidates:
        if path.resolve() in in_use:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if removed:
        log.info("removed %d stale python-backend shm regions", len(removed))
    return removed


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class TritonServer:
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

    # --- addresses -------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

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
        server_dir = self._assemble()
        env = self._environment()
        self._preflight(server_dir, env)
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

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL the server's process group."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
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
        for region in _SHM_DIR.glob(self.shm_prefix + "*"):
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
    def _assemble(self) -> Path:
        """Copy the wheel's server into the work folder once (again when the wheel changes)."""
        source = find_pytriton_root()
        stub = source / "python_backend_stubs" / _STUB_PYTHON / "triton_python_backend_stub"
        if not stub.is_file():
            raise EmbeddedTritonUnavailableError(
                f"no python backend stub for Python {_STUB_PYTHON} in {source}. " + _external_hint()
            )
        target = self.work_dir / "server"
        binary = source / "bin" / "tritonserver"
        stamp = f"{binary.stat().st_size}:{binary.stat().st_mtime_ns}:{stub.stat().st_mtime_ns}\n"
        stamp_path = target / ".source"
        if stamp_path.is_file() and stamp_path.read_text() == stamp:
            return target
        if target.exists():
            shutil.rmtree(target)
        for part in ("bin", "backends", "caches"):
            shutil.copytree(source / part, target / part, symlinks=True)
        shutil.copy2(stub, target / "backends" / "python" / "triton_python_backend_stub")
        stamp_path.write_text(stamp)
        return target

    @staticmethod
    def _environment() -> dict[str, str]:
        source = find_pytriton_root()
        libs = source.parents[1] / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        venv_bin = str(Path(sys.prefix) / "bin")
        env["PATH"] = os.pathsep.join(p for p in (venv_bin, env.get("PATH", "")) if p)
        return env

    @staticmethod
    def _preflight(server_dir: Path, env: dict[str, str]) -> None:
        for binary in (
            server_dir / "bin" / "tritonserver",
            server_dir / "backends" / "python" / "triton_python_backend_stub",
        ):
            missing = _missing_libraries(binary, env)
            if missing:
                raise EmbeddedTritonUnavailableError(
                    f"the embedded tritonserver cannot run here: {binary.name} needs "
                    f"{', '.join(missing)} (for libpython3.11.so.1.0 install the system package "
                    "libpython3.11). " + _external_hint()
                )

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
