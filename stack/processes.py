"""Service processes found again and stopped: a pid recorded with its start time (so a recycled
pid is never mistaken for ours), memory of a process tree, and stopping a process and its group."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

import psutil

log = logging.getLogger("stack.service")  # the services' log, as before the split


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> PidRecord:
        return cls(pid=pid, create_time=psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None when it exited or its pid was reused."""
        try:
            proc = psutil.Process(self.pid)
            # Tolerance: create_time is derived from boot time and clock ticks.
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        return proc


def process_tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for member in [proc, *proc.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def wait_gone(proc: psutil.Process, timeout_s: float) -> bool:
    """Wait until the process has exited; True if it did within timeout_s.

    A zombie counts as gone: a daemon whose parent has exited is reaped by init, which may take
    its time (seconds on some container inits), and it holds no port or file any more.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def terminate(
    proc: psutil.Process, timeout_s: float, sig: int = signal.SIGTERM, whole_group: bool = True
) -> None:
    """Send ``sig`` to the process (and its session's group), SIGKILL whatever is left after timeout_s."""
    try:
        group = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    # Our services lead their own session, so their group holds exactly their helpers.
    signal_group = whole_group and group == proc.pid
    try:
        if signal_group:
            os.killpg(group, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return
    if wait_gone(proc, timeout_s):
        return
    log.warning("pid %d did not stop within %.1f s; killing it", proc.pid, timeout_s)
    try:
        if signal_group:
            os.killpg(group, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, psutil.NoSuchProcess):
        return
    wait_gone(proc, 5.0)
