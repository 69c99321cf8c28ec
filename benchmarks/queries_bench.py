"""`steel bench queries`: latency of the dashboard's database queries on a large defect history.

Seeds a fresh database with --rows defect rows (1,000,000 by default;
steelcore/postgres/synthetic_history.py), then times each query the History and Live pages run,
exactly as they run it (steelcore.postgres.defect_history, live_reads and frame_reads), and
reports p50 / p95. Side by side, each history query also runs with index scans disabled (the plan
Postgres would be left with without the schema's indexes); the ratio says what the index buys.

Without --db-url an embedded Postgres is started in a temporary folder and removed afterwards.
With --db-url (a role allowed to CREATE DATABASE) a scratch database is created on that server
and dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import report
from steelcore import exit_codes

NAME = "queries"
DEFAULT_ROWS = 1_000_000
BASELINE_REPEATS = 5
PAGE = 25


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Any], object]  # engine -> result (rows or a count)
    explain: Any = None  # DefectFilters whose plan is checked for an index, if a history query


def add_arguments(parser: argparse.ArgumentParser) -> None:
    report.add_common_arguments(parser, repeats=20, warmup=2)
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help=f"defect rows (default {DEFAULT_ROWS:,})"
    )
    parser.add_argument(
        "--db-url", help="server to create a scratch database on (default: embedded Postgres)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs with index scans disabled")


def cases(now: datetime) -> list[Case]:
    from steelcore.postgres import frame_reads, live_reads
    from steelcore.postgres.defect_history import DefectFilters, coil_summary, count_defects, query_defects

    day = DefectFilters(time_from=now - timedelta(days=1), time_to=now, limit=PAGE)
    week = DefectFilters(time_from=now - timedelta(days=7), time_to=now, limit=PAGE)
    filtered = [
        ("page, last 24 h", day),
        ("page, rare class 4, 7 days", replace(week, class_ids=(4,))),
        ("page, line + camera, 24 h", replace(day, line_id="L2", camera_id="C3")),
        ("page, one coil", DefectFilters(coil_id="K2-40", limit=PAGE)),
        ("page, area + severity, 24 h", replace(day, min_area=3000, min_severity=0.8)),
        ("page 400 (offset 10k), 7 days", replace(week, offset=10_000)),
    ]
    result = [Case(name, _bind(query_defects, f), f) for name, f in filtered]
    result += [
        Case("count, last 24 h", _bind(count_defects, replace(day, limit=None)), replace(day, limit=None)),
        Case("count, class 4, 30 days", _bind(count_defects, DefectFilters(class_ids=(4,), limit=None))),
        Case(
            "coil summary, line, 24 h",
            lambda e: coil_summary(e, line_id="L1", time_from=now - timedelta(days=1), time_to=now),
        ),
        Case(
            "live: rates, 300 s",
            lambda e: live_reads.camera_rates(e, now - timedelta(seconds=300), until=now),
        ),
        Case(
            "live: throughput, 300 s", lambda e: live_reads.throughput(e, now - timedelta(seconds=300), now)
        ),
        Case("live: alarm feed", lambda e: live_reads.recent_alarms(e, 6)),
        Case(
            "live: latest frames",
            lambda e: frame_reads.recent_defective_frames(e, now - timedelta(seconds=300), 3),
        ),
        Case("live: coil map", lambda e: frame_reads.coil_marks(e, live_reads.current_coil(e) or "")),
    ]
    return result


def _bind(fn: Callable[[Any, Any], object], filters: Any) -> Callable[[Any], object]:
    return lambda engine: fn(engine, filters)


def _size(result: object) -> int:
    return len(result) if isinstance(result, list) else int(result) if isinstance(result, int) else 1


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    from steelcore.postgres.synthetic_history import SeedShape, frames_for

    shape = SeedShape(frames=frames_for(args.rows), end=datetime.now(UTC).replace(microsecond=0))
    with _database(args.db_url) as url:
        results = _measure(url, shape, args)
    _report(results, shape, args)
    return exit_codes.OK


def _measure(url: str, shape: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from steelcore.postgres import migrate
    from steelcore.postgres.defect_history import explain_plan, plan_without_index_scans
    from steelcore.postgres.engine import create_db_engine
    from steelcore.postgres.synthetic_history import seed_history

    migrate.upgrade(url)
    engine = create_db_engine(url)
    try:
        with tqdm(total=shape.frames, desc="seeding frames", unit="frame", disable=None) as bar:
            seed_history(engine, shape, bar.update)
        baseline = create_db_engine(url)
        plan_without_index_scans(baseline)

        results = []
        for case in tqdm(cases(shape.end), desc="queries", unit="query", disable=None):
            rows = _size(case.run(engine))
            ours = report.time_callable(
                lambda c=case: c.run(engine), warmup=args.warmup, repeats=args.repeats
            )
            entry: dict[str, Any] = {"query": case.name, "rows": rows, "indexed": ours.to_dict()}
            if case.explain is not None:
                plan = explain_plan(engine, case.explain)
                entry["defects_index"] = _defects_access(plan)
                if not args.no_baseline:
                    base = report.time_callable(
                        lambda c=case: c.run(baseline), warmup=1, repeats=min(BASELINE_REPEATS, args.repeats)
                    )
                    entry["no_index"] = base.to_dict()
                    entry["ratio"] = report.ratio(base.median_us, ours.median_us)
            results.append(entry)
        baseline.dispose()
        return results
    finally:
        engine.dispose()


def _defects_access(plan: str) -> str:
    """How the plan reads defects: the index it scans, or "seq scan"."""
    found = re.search(r"Scan(?: Backward)? using (\w+) on defects", plan)
    if found:
        return found.group(1)
    found = re.search(r"Bitmap Index Scan on (ix_defects\w+)", plan)
    return found.group(1) if found else "seq scan"


def _report(results: list[dict[str, Any]], shape: Any, args: argparse.Namespace) -> None:
    def ms(timing: dict[str, Any] | None, key: str) -> float | str:
        return timing[key] / 1000 if timing else "-"

    rows = [
        [
            r["query"],
            r["rows"],
            ms(r["indexed"], "p50_us"),
            ms(r["indexed"], "p95_us"),
            ms(r.get("no_index"), "p50_us"),
            r.get("ratio", "-"),
            r.get("defects_index", "-"),
        ]
        for r in results
    ]
    report.print_table(
        ["query", "rows", "p50 ms", "p95 ms", "no-index p50 ms", "x", "defects read by"],
        rows,
        title=f"dashboard queries on {args.rows:,} defect rows ({shape.frames:,} frames, 30 days); "
        f"{args.repeats} runs each (x = no-index / indexed)",
    )
    config = {"rows": args.rows, "frames": shape.frames, "repeats": args.repeats, "warmup": args.warmup}
    config["baseline"] = "same query with enable_indexscan/bitmapscan/indexonlyscan off"
    path = report.write_results(NAME, results, config, args.json)
    print(f"results: {path}")
    if not args.no_plot:
        chart = report.save_bar_chart(
            path.with_suffix(".png"),
            f"dashboard queries on {args.rows:,} defects",
            [r["query"] for r in results],
            {
                "p50 ms": [r["indexed"]["p50_us"] / 1000 for r in results],
                "p95 ms": [r["indexed"]["p95_us"] / 1000 for r in results],
            },
            ylabel="ms",
            log_scale=True,
        )
        print(f"chart: {chart}")


@contextlib.contextmanager
def _database(server_url: str | None) -> Iterator[str]:
    """A scratch database: on ``server_url``, or on an embedded Postgres in a temporary folder."""
    if server_url is not None:
        from steelcore.postgres.scratch import scratch_database

        with scratch_database(server_url, "steel_bench") as url:
            yield url
        return
    from stack.postgres_server import PostgresServer
    from stack.service import free_port

    with tempfile.TemporaryDirectory(prefix="steel-bench-queries-") as tmp:
        # As root the server user must pass this 0700 folder to keep the data in it (not in
        # embedded_postgres_home, where it would outlive the benchmark); it is ours to open.
        Path(tmp).chmod(0o755)
        server = PostgresServer(Path(tmp), free_port())
        server.start(timeout_s=60)
        try:
            yield server.url
        finally:
            server.stop()
