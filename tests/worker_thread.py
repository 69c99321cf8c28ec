"""An InferenceWorker run in a thread, for integration tests that drive one in-process.

Importable from every test folder: pytest puts tests/ on sys.path because tests/conftest.py lives there.
"""

from __future__ import annotations

import threading
from typing import Any

from steelcore.settings import Settings
from workers.worker_config import WorkerConfig
from workers.worker_loop import InferenceWorker


class WorkerThread:
    """Runs the worker on enter, stops it on exit; ``error`` holds what ended it abnormally."""

    def __init__(self, settings: Settings, config: WorkerConfig, stop_timeout_s: float, **parts: Any) -> None:
        self.worker = InferenceWorker(settings, config, **parts)
        self.stop_timeout_s = stop_timeout_s
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # reported to the test
            self.error = exc

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.worker.stop_event.set()
        self.thread.join(self.stop_timeout_s)
        assert not self.thread.is_alive(), f"worker did not stop within {self.stop_timeout_s:.0f} s"
