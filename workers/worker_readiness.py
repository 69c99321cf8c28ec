"""The worker's /readyz checks (workers.worker_probes; run on the metrics server's threads),
mixed into workers.worker_loop.InferenceWorker, whose attributes they use."""

from __future__ import annotations

from typing import Any

from workers.postgres_store import PostgresStore


class ReadinessChecks:
    """One check per part the worker needs; None when ready, else why not."""

    settings: Any
    stop_event: Any
    inference: Any
    store: Any

    def _check_running(self) -> str | None:
        return "stopping" if self.stop_event.is_set() else None

    def _check_triton(self) -> str | None:
        inference = self.inference
        if inference is None:
            return "client not started"
        ready = getattr(inference, "ready", None)  # injected test doubles may have no health call
        if callable(ready) and not ready():
            return f"model {self.settings.triton_model!r} not ready"
        return None

    def _check_database(self) -> str | None:
        store = self.store
        if store is None:
            return "not connected"
        if not isinstance(store, PostgresStore):
            return None
        from steelcore.postgres.migrate import head_revision, stored_revision

        if self._schema_head is None:
            self._schema_head = head_revision()
        current = stored_revision(store.engine)
        if current != self._schema_head:
            return f"schema at revision {current}, this worker needs {self._schema_head}"
        return None

    def _check_assignment(self) -> str | None:
        # An empty assignment (more workers than partitions) still means a member of the group.
        return None if self._assigned else "no partition assignment yet"
