"""`steel work`: run one inference worker (Kafka -> Triton -> Postgres + Redis alarms).

Run several, on one machine or many, to scale: they share the frames topic's partitions as one
consumer group. SIGTERM or Ctrl-C finishes the batch in hand, commits it, leaves the group and
exits 0; a second Ctrl-C stops at once (the uncommitted batch is redelivered to another worker).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from steelcore import exit_codes
from steelcore.settings import get_settings

log = logging.getLogger("steel.work")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from workers.worker_config import WorkerConfig

    defaults = WorkerConfig()
    parser.add_argument("--group", default=None, help="consumer group (default: settings.consumer_group)")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="messages per batch (default %(default)s)"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=int,
        default=round(defaults.batch_wait_s * 1000),
        help="longest wait to fill a batch (default %(default)s)",
    )
    parser.add_argument(
        "--no-infer-ahead",
        action="store_true",
        help="send a batch to Triton only after the one before is committed (default: the next batch "
        "is sent while this one is stored, so Triton is not idle between batches)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=get_settings().worker_metrics_port,
        help="serve Prometheus /metrics on this port; 0 = off (default %(default)s)",
    )
    parser.add_argument(
        "--max-backoff-s",
        type=float,
        default=defaults.backoff_max_s,
        help="longest wait between retries during an outage (default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=defaults.shutdown_grace_s,
        help="after SIGTERM, how long an outage may delay the exit (default %(default)s)",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        help="model version label stored with each frame when Triton's answer names none (a repository "
        "exported before MODEL_VERSION); otherwise the answer's version is stored",
    )


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from steelcore.errors import ExternalServiceError
    from steelcore.kafka.exceptions import KafkaException
    from steelcore.redis.exceptions import RedisError
    from steelcore.settings import get_settings
    from workers.worker_config import WorkerConfig
    from workers.worker_errors import BatchAbandonedError
    from workers.worker_loop import InferenceWorker

    try:
        config = WorkerConfig(
            batch_size=args.batch_size,
            batch_wait_s=args.batch_wait_ms / 1000.0,
            infer_ahead=not args.no_infer_ahead,
            metrics_port=args.metrics_port,
            backoff_max_s=args.max_backoff_s,
            backoff_initial_s=min(WorkerConfig().backoff_initial_s, args.max_backoff_s),
            shutdown_grace_s=args.shutdown_grace_s,
            model_version=args.model_version,
        )
    except ValueError as exc:
        print(f"steel work: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    worker = InferenceWorker(get_settings(), config, group_id=args.group)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
        worker.stop_event.set()
        # A second Ctrl-C interrupts for real.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        worker.run()
        if worker.teardown_hung:
            # A client left hanging in its close would hang the interpreter's exit too.
            logging.shutdown()
            os._exit(exit_codes.OK)
    # The libraries' own connection errors are not ours to re-root; they mean the same exit.
    except (ExternalServiceError, OperationalError, RedisError, KafkaException) as exc:
        print(f"steel work: service unavailable: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    except BatchAbandonedError as exc:
        print(f"steel work: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    except OSError as exc:  # e.g. the metrics port is taken
        print(f"steel work: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    return exit_codes.OK
