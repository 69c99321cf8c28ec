"""`steel query`: the defect history as a terminal table, a CSV, or a Kaggle submission CSV.

    steel query --from 2025-01-01T08:00 --to 2025-01-01T09:00 --class 3 4 --min-area 500
    steel query --coil K123 --format kaggle --out k123.csv     # ImageId = frame id
    steel query --line L1 --summary                             # per coil: defects per 100 m

Times without an offset are read as UTC. The database is STEEL_POSTGRES_URL, else the embedded
one `steel up` started; --db-url overrides both.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from steelcore import exit_codes

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from steelcore.postgres.defect_history import DefectFilters, DefectRow

FORMATS = ("table", "csv", "kaggle")


def iso_time(text: str) -> datetime:
    """argparse type: an ISO-8601 time; without an offset it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 time: {text!r} (e.g. 2025-01-31T08:00:00Z)"
        ) from exc
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from steelcore.postgres.defect_history import DEFAULT_LIMIT

    parser.add_argument(
        "--from", dest="time_from", type=iso_time, metavar="ISO", help="captured at or after (ISO-8601)"
    )
    parser.add_argument(
        "--to", dest="time_to", type=iso_time, metavar="ISO", help="captured before (ISO-8601)"
    )
    parser.add_argument("--line", dest="line_id", metavar="L", help="line id")
    parser.add_argument("--camera", dest="camera_id", metavar="C", help="camera id")
    parser.add_argument("--coil", dest="coil_id", metavar="K", help="coil id")
    parser.add_argument("--class", dest="class_ids", type=int, nargs="+", metavar="N", help="class id(s)")
    parser.add_argument("--min-area", type=int, metavar="A", help="smallest defect area in pixels")
    parser.add_argument("--min-severity", type=float, metavar="S", help="smallest severity, 0..1")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"most rows (default {DEFAULT_LIMIT}; 0 = all)",
    )
    parser.add_argument("--offset", type=int, default=0, metavar="N", help="rows to skip (paging)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write to this file instead of standard output"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="per-coil defect density instead of rows (uses --coil, --line, --from, --to)",
    )
    parser.add_argument(
        "--db-url", metavar="URL", help="database URL (default: STEEL_POSTGRES_URL or the embedded stack)"
    )


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import DBAPIError, ProgrammingError

    from steelcore.postgres.defect_history import DefectFilters
    from steelcore.settings import redact_url

    if args.limit < 0:
        print(f"steel query: --limit must be >= 0, got {args.limit}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    try:
        filters = DefectFilters(
            time_from=args.time_from,
            time_to=args.time_to,
            line_id=args.line_id,
            camera_id=args.camera_id,
            coil_id=args.coil_id,
            class_ids=tuple(args.class_ids) if args.class_ids else None,
            min_area=args.min_area,
            min_severity=args.min_severity,
            limit=args.limit or None,
            offset=args.offset,
        )
    except ValueError as exc:
        print(f"steel query: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT

    url = _database_url(args.db_url)
    if url is None:
        return exit_codes.UNAVAILABLE
    from steelcore.postgres.engine import create_db_engine

    try:
        engine = create_db_engine(url)
    except ValueError as exc:
        print(f"steel query: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    try:
        if args.summary:
            _write_summary(engine, filters, args.out)
        else:
            _write_defects(engine, filters, args.format, args.out)
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) == "42P01":  # undefined_table: never migrated
            print(
                f"steel query: {redact_url(url)} has no defect tables; run `steel up` or "
                "`python -m steelcore.postgres.migrate upgrade URL`",
                file=sys.stderr,
            )
            return exit_codes.UNAVAILABLE
        raise
    except DBAPIError as exc:
        if not exc.connection_invalidated and not _is_connection_error(exc):
            raise
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        print(
            f"steel query: cannot reach the defect database at {redact_url(url)}: {reason}", file=sys.stderr
        )
        return exit_codes.UNAVAILABLE
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        engine.dispose()
    return exit_codes.OK


def _is_connection_error(exc: Exception) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)


def _database_url(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    from steelcore.service_urls import ServiceUnavailableError, postgres_url

    try:
        return postgres_url()
    except ServiceUnavailableError as exc:
        print(f"steel query: {exc}", file=sys.stderr)
        return None


def _write_defects(engine: Engine, filters: DefectFilters, fmt: str, out: Path | None) -> None:
    from steelcore.postgres.defect_history import count_defects, query_defects

    rows = query_defects(engine, filters)
    if fmt == "kaggle":
        _write_kaggle(rows, out)
        return
    with _open_out(out) as stream:
        if fmt == "csv":
            from steelcore.defect_export import write_csv

            write_csv(stream, rows)
        else:
            _write_table(stream, rows, count_defects(engine, filters))


def _write_kaggle(rows: Sequence[DefectRow], out: Path | None) -> None:
    from steelcore.defect_export import kaggle_text, write_kaggle

    if out is not None:
        write_kaggle(out, rows)
    else:
        sys.stdout.write(kaggle_text(rows))


def _write_table(stream: TextIO, rows: Sequence[DefectRow], total: int) -> None:
    header = ("captured_at (UTC)", "line", "camera", "coil", "pos_m", "frame_id", "class", "area_px")
    header += ("severity", "prob", "bbox x0,y0,x1,y1")
    table = [
        (
            r.captured_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            r.line_id,
            r.camera_id,
            r.coil_id,
            f"{r.position_m:.2f}",
            r.frame_id,
            str(r.class_id),
            str(r.area_px),
            f"{r.severity:.3f}",
            f"{r.probability:.3f}",
            ",".join(map(str, r.bbox)),
        )
        for r in rows
    ]
    _print_columns(stream, header, table)
    stream.write(f"{len(rows)} of {total} matching defects\n")


def _print_columns(stream: TextIO, header: Sequence[str], table: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(row[i]) for row in table]) for i, h in enumerate(header)]
    stream.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    for row in table:
        stream.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _write_summary(engine: Engine, f: DefectFilters, out: Path | None) -> None:
    from steelcore.postgres.defect_history import DENSITY_PER_M, coil_summary_of
    from steelcore.severstal import CLASS_IDS

    summaries = coil_summary_of(engine, f)
    classes = sorted(set(CLASS_IDS).union(*(s.defects_by_class for s in summaries)))
    header = ["coil", "line", "frames", "length_m"] + [f"class {c} /{DENSITY_PER_M:g} m" for c in classes]
    table = []
    for s in summaries:
        # A coil seen at one position has no length: its densities are unknown, shown as "-".
        cells = [
            f"{s.defects_by_class.get(c, 0) * DENSITY_PER_M / s.length_m:.2f}" if s.length_m > 0 else "-"
            for c in classes
        ]
        table.append([s.coil_id, s.line_id, str(s.frames), f"{s.length_m:.1f}", *cells])
    with _open_out(out) as stream:
        _print_columns(stream, header, table)


@contextlib.contextmanager
def _open_out(out: Path | None) -> Iterator[TextIO]:
    """Standard output, or a file written once the whole output is ready (none on error)."""
    if out is None:
        yield sys.stdout
        return
    buffer = io.StringIO()
    yield buffer
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(buffer.getvalue(), encoding="utf-8", newline="")
