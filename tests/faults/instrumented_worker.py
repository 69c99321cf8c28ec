"""`steel work` with librdkafka statistics, for the fault suite's backpressure case.

The same InferenceWorker, options and STEEL_* settings as `steel work`; only its consumer is
built here, from the same steelcore.kafka.client_config.consumer_config, with statistics every
STATS_INTERVAL_MS. Each statistics report becomes one JSON line in the file named by
STEEL_FAULT_STATS: how many frames the process holds (fetched from the broker, not committed)
and how many bytes wait in librdkafka's prefetch queue.

STEEL_FAULT_LIBRDKAFKA_DEFAULTS=1 puts librdkafka's own prefetch defaults back, for comparison.

    python tests/faults/instrumented_worker.py [steel work options]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

STATS_INTERVAL_MS = 250
# librdkafka's defaults, which steelcore.kafka.client_config replaces with bounds of its own.
LIBRDKAFKA_PREFETCH_DEFAULTS = {
    "queued.min.messages": 100_000,
    "queued.max.messages.kbytes": 65_536,
    "fetch.max.bytes": 52_428_800,
}


def held_frames(stats: dict[str, Any]) -> dict[str, int]:
    """From one statistics report: frames the consumer holds (fetched from the broker, not yet
    committed: in_process), the bytes waiting in librdkafka's prefetch queue, and the offsets
    fetched and committed, summed over the assigned partitions.

    fetchq_size is the consumer's one queue (every partition reports the same), hence the max;
    fetchq_cnt is not used: it also counts queued non-message events, statistics among them.
    """
    held = prefetched_bytes = fetched = committed_total = 0
    for topic in stats.get("topics", {}).values():
        for pid, part in topic.get("partitions", {}).items():
            if pid == "-1" or part.get("next_offset", -1) < 0:
                continue
            committed = max(0, part.get("committed_offset", -1))
            held += max(0, part["next_offset"] - committed)
            fetched += part["next_offset"]
            committed_total += committed
            prefetched_bytes = max(prefetched_bytes, part.get("fetchq_size", 0))
    return {
        "in_process": held,
        "prefetched_bytes": prefetched_bytes,
        "fetched": fetched,
        "committed": committed_total,
    }


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import Consumer

    from steelcore.kafka.client_config import consumer_config
    from steelcore.settings import get_settings
    from workers import work_cli
    from workers.worker_config import WorkerConfig
    from workers.worker_loop import InferenceWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="instrumented_worker")
    work_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    settings = get_settings()
    out = open(os.environ["STEEL_FAULT_STATS"], "a", buffering=1)

    def on_stats(raw: str) -> None:
        # "ts" (librdkafka's monotonic clock, microseconds) is when the report was made; it may be
        # delivered much later when the worker is blocked and not polling, hence both clocks.
        stats = json.loads(raw)
        line = {"ts_s": stats["ts"] / 1e6, "delivered_at": time.time(), **held_frames(stats)}
        out.write(json.dumps(line) + "\n")

    overrides: dict[str, Any] = {
        "statistics.interval.ms": STATS_INTERVAL_MS,
        "stats_cb": on_stats,
        "logger": logging.getLogger("librdkafka"),
    }
    if os.environ.get("STEEL_FAULT_LIBRDKAFKA_DEFAULTS") == "1":
        overrides.update(LIBRDKAFKA_PREFETCH_DEFAULTS)
    consumer = Consumer(consumer_config(settings.consumer_group, settings, overrides))
    config = WorkerConfig(
        batch_size=args.batch_size,
        batch_wait_s=args.batch_wait_ms / 1000.0,
        metrics_port=args.metrics_port,
        backoff_initial_s=min(WorkerConfig().backoff_initial_s, args.max_backoff_s),
        backoff_max_s=args.max_backoff_s,
        shutdown_grace_s=args.shutdown_grace_s,
    )
    worker = InferenceWorker(settings, config, consumer=consumer)

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    worker.run()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
