"""The python backend's shared-memory regions in /dev/shm: which are held, and clearing the ones that
crashed stubs left behind."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("stack.triton_server")  # the launcher's log, as before the split

SHM_GLOB = "triton_python_backend_shm_region_*"
SHM_DIR = Path("/dev/shm")


def shm_regions_in_use(shm_dir: Path = SHM_DIR) -> set[Path]:
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


def clean_stale_shm(shm_dir: Path = SHM_DIR) -> list[Path]:
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
