"""`steel maintain`: the defect database's housekeeping, once or every N seconds.

One run, in this order:
  1. purge defect images stored more than settings.frame_image_retention_days ago
     (steelcore.postgres.frame_images.purge_frame_images);
  2. create the frames partitions of this week and the next weeks_ahead (steelcore.postgres.partitions);
  3. drop the frames partitions whose whole week is older than settings.frame_retention_days
     (0 = keep forever), with their defects, alarms, feedback and images.

Database: STEEL_POSTGRES_URL (or the embedded one), as the tables' owner (the login that runs the
migrations): creating and dropping partitions needs ownership, purging needs DELETE.

Exit codes: 0 done; 1 a step failed or found frames it cannot partition (stated on stderr);
4 the database is unreachable or not migrated; 130 interrupted. With ``--every SECONDS`` (compose:
a service that runs beside the workers) it repeats until SIGTERM/Ctrl-C, a failed run is logged
and retried at the next period, and SIGTERM exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import UTC, datetime, timedelta
from types import FrameType

from steelcore import exit_codes
from steelcore.settings import Settings, get_settings

log = logging.getLogger("steel.maintain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from steelcore.postgres.partitions import WEEKS_AHEAD

    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument(
        "--every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="repeat forever with this period (default: run once and exit)",
    )
    parser.add_argument(
        "--weeks-ahead",
        type=int,
        default=WEEKS_AHEAD,
        help="weekly frames partitions created ahead of the current week (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    if args.every is not None and args.every <= 0:
        log.error("--every must be > 0 seconds, got %s", args.every)
        return exit_codes.USAGE
    if args.weeks_ahead < 0:
        log.error("--weeks-ahead must be >= 0, got %s", args.weeks_ahead)
        return exit_codes.USAGE
    settings = get_settings()
    if args.every is None:
        return maintain_once(settings, weeks_ahead=args.weeks_ahead)
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    while not stop.is_set():
        code = maintain_once(settings, weeks_ahead=args.weeks_ahead)
        if code != exit_codes.OK:
            log.warning("maintenance run ended with exit code %d; next try in %g s", code, args.every)
        stop.wait(args.every)
    return exit_codes.OK


def maintain_once(settings: Settings, *, weeks_ahead: int, now: datetime | None = None) -> int:
    """One maintenance run (module docstring); returns its exit code."""
    from sqlalchemy.exc import OperationalError

    from steelcore import service_urls
    from steelcore.postgres import partitions
    from steelcore.postgres.engine import create_db_engine
    from steelcore.postgres.frame_images import purge_frame_images

    when = now or datetime.now(UTC)
    try:
        url = service_urls.postgres_url(settings)
    except service_urls.ServiceUnavailableError as exc:
        log.error("%s", exc)
        return exit_codes.UNAVAILABLE
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            if not partitions.is_partitioned(conn):
                log.error(
                    "frames is not a partitioned table: migrate first "
                    "(python -m steelcore.postgres.migrate upgrade)"
                )
                return exit_codes.UNAVAILABLE
        images = purge_frame_images(
            engine, older_than=timedelta(days=settings.frame_image_retention_days), now=when
        )
        log.info("purged %d frame image(s) older than %g days", images, settings.frame_image_retention_days)
        created = partitions.create_ahead(engine, when, weeks_ahead)
        if created.created:
            log.info("created frames partitions %s", ", ".join(created.created))
        problems = list(created.problems)
        if settings.frame_retention_days > 0:
            cutoff = when - timedelta(days=settings.frame_retention_days)
            dropped = partitions.drop_before(engine, cutoff)
            log.info(
                "dropped %d frames partition(s) older than %s%s; %d old frame(s) deleted from %s",
                len(dropped.dropped),
                f"{cutoff:%Y-%m-%d %H:%M} UTC",
                f" ({', '.join(dropped.dropped)})" if dropped.dropped else "",
                dropped.default_rows_deleted,
                partitions.DEFAULT_PARTITION,
            )
        for problem in problems:
            log.error("%s", problem)
        return exit_codes.FAILURE if problems else exit_codes.OK
    except OperationalError as exc:
        log.error("database unavailable: %s", str(exc).splitlines()[0])
        return exit_codes.UNAVAILABLE
    except Exception as exc:  # one failed step fails the run; --every tries again next period
        log.error(
            "maintenance failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""
        )
        return exit_codes.FAILURE
    finally:
        engine.dispose()
