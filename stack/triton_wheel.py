"""The tritonserver of the nvidia-pytriton wheel, made runnable.

The wheel ships a complete ``tritonserver`` 2.51 with the python backend, but not in a layout the
server can use as is: the python backend needs the stub for our Python version beside it, and the
binaries find their libraries only through ``LD_LIBRARY_PATH``. So the server is assembled once in
a work folder under the run directory (``bin``, ``backends``, ``caches``, plus the 3.11 stub).
``PATH`` starts with the venv's ``bin`` so the stub's embedded interpreter imports the venv's
packages (torch, numpy<2, steelcore).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stack.triton_errors import EmbeddedTritonUnavailableError, external_hint

_STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def find_pytriton_root() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedTritonUnavailableError(
            "the nvidia-pytriton wheel is not installed (pip install 'resunet-steel[embedded]'). "
            + external_hint()
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise EmbeddedTritonUnavailableError(f"no tritonserver binary in {root}. " + external_hint())
    return root


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    """Shared libraries ``binary`` needs but the loader cannot find (empty if ldd is absent)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    out = subprocess.run([ldd, str(binary)], env=env, capture_output=True, text=True, check=False).stdout
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def assemble_server(work_dir: Path) -> Path:
    """Copy the wheel's server into the work folder once (again when the wheel changes)."""
    source = find_pytriton_root()
    stub = source / "python_backend_stubs" / _STUB_PYTHON / "triton_python_backend_stub"
    if not stub.is_file():
        raise EmbeddedTritonUnavailableError(
            f"no python backend stub for Python {_STUB_PYTHON} in {source}. " + external_hint()
        )
    target = work_dir / "server"
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


def server_environment() -> dict[str, str]:
    source = find_pytriton_root()
    libs = source.parents[1] / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in (venv_bin, env.get("PATH", "")) if p)
    return env


def preflight(server_dir: Path, env: dict[str, str]) -> None:
    for binary in (
        server_dir / "bin" / "tritonserver",
        server_dir / "backends" / "python" / "triton_python_backend_stub",
    ):
        missing = _missing_libraries(binary, env)
        if missing:
            raise EmbeddedTritonUnavailableError(
                f"the embedded tritonserver cannot run here: {binary.name} needs "
                f"{', '.join(missing)} (for libpython3.11.so.1.0 install the system package "
                "libpython3.11). " + external_hint()
            )
