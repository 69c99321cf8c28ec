"""Tuning of one inference worker (workers.worker_loop)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerConfig:
    """Tuning of one worker; the defaults suit the embedded stack on a small machine."""

    # The largest batch (one Triton request and one transaction); workers.batch_policy picks the
    # size of each batch up to it, from the backlog and settings.latency_target_s.
    batch_size: int = 8
    batch_wait_s: float = 0.2  # how long consume() waits for a first frame before the loop goes round
    # Once Triton answered a batch, take the next one (the frames waiting) and send it before
    # storing this one, so Triton infers it while this batch is stored (workers.worker_loop).
    infer_ahead: bool = True
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    shutdown_grace_s: float = 30.0  # after a stop request, how long an outage may still delay exit
    dead_letter_timeout_s: float = 10.0
    startup_timeout_s: float = 60.0  # wait for the Triton model to be ready at start
    metrics_port: int = 0  # 0 = no /metrics endpoint; `steel work` takes settings.worker_metrics_port
    log_every_s: float = 30.0
    # Label stored with each frame when the answer names no MODEL_VERSION (a repository exported
    # before versions); default: the Triton model name. Answers that name one store theirs.
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_wait_s < 0 or self.shutdown_grace_s < 0:
            raise ValueError("batch_wait_s and shutdown_grace_s must be >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(
                "need 0 < backoff_initial_s <= backoff_max_s, "
                f"got {self.backoff_initial_s} and {self.backoff_max_s}"
            )
