"""Kept for compatibility: the worker now lives in workers.worker_loop (InferenceWorker) and
workers.worker_config (WorkerConfig); `steel work`, the demo and the benchmarks import it from here."""

from workers.worker_config import WorkerConfig
from workers.worker_loop import InferenceWorker

__all__ = ["InferenceWorker", "WorkerConfig"]
