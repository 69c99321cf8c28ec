"""Measure the storage each inspected frame costs: Kafka message, Postgres rows, Redis alarm entry.

Input is real Severstal data (shared/data/severstal_sample): its frames for image bytes and its
2,833 real RLE masks for the defect rows. Everything is written through the product's own code
(steelcore.frame_message.encode_frame, steelcore.postgres.defect_writes.DefectStore.write_batch,
steelcore.redis.alarm_stream.AlarmStream.publish), into a fresh database on the embedded Postgres and a
fresh stream on the embedded Redis (or the servers given with --postgres-url / --redis-url).

Also timed, because they size the workers: decoding a frame message, and one write_batch.

Bytes per row are marginal: the growth of pg_total_relation_size (heap + indexes + TOAST) between
the first and the second half of the seeding, divided by the rows added, so a table's fixed
overhead (metapages, the first empty page) does not count. Redis: MEMORY USAGE of the stream
(SAMPLES 0: exact), marginal in the same way.

    .venv/bin/python scripts/measure_row_bytes.py [--frames 4000] [--json bench-results/row_bytes.json]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.report import machine_info, print_table, write_results
from benchmarks.row_bytes_inputs import frame_records, load_defects, load_frames, message_bytes
from steelcore import exit_codes
from steelcore.frame_message import encode_image
from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.settings import Settings
from steelcore.severstal import CLASS_NAMES

NAME = "row_bytes"
BATCH = 8  # the worker's default batch: one transaction per batch, as in production
MEASURED_TABLES = ("frames", "defects", "alarms", "frame_images", "coils")
RLE_LABELS = SEVERSTAL_SAMPLE_DIR / "labels" / "train_rle_subset.csv"
# Severstal train set: 6,666 of 12,568 frames have a defect (PROVENANCE.md); the default seeds
# that share so that defect rows are plentiful. Bytes per row do not depend on it.
KAGGLE_DEFECTIVE_SHARE = 6666 / 12568


def marginal(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, Any]]:
    out = {}
    for table in MEASURED_TABLES:
        added = after[table]["rows"] - before[table]["rows"]
        out[table] = {"rows_added": added, "rows_total": after[table]["rows"]}
        for part in ("total", "heap", "indexes"):
            grown = after[table][part] - before[table][part]
            out[table][f"{part}_bytes_per_row"] = round(grown / added, 1) if added else None
    return out


def measure_postgres(url: str, records: list[Any]) -> dict[str, Any]:
    from steelcore.postgres import migrate
    from steelcore.postgres.defect_writes import DefectStore
    from steelcore.postgres.engine import create_db_engine
    from steelcore.postgres.storage_sizes import column_bytes, table_sizes

    migrate.upgrade(url)
    engine = create_db_engine(url)
    try:
        store = DefectStore(engine, Settings())
        half = len(records) // 2
        write_ms = []
        for i in range(0, half, BATCH):
            write_ms.append(store.write_batch(records[i : min(i + BATCH, half)]).elapsed_ms)
        before = table_sizes(engine, MEASURED_TABLES)
        for i in range(half, len(records), BATCH):
            write_ms.append(store.write_batch(records[i : i + BATCH]).elapsed_ms)
        after = table_sizes(engine, MEASURED_TABLES)
        write_ms.sort()
        timing = {
            "batch": BATCH,
            "write_ms_median": round(statistics.median(write_ms), 2),
            "write_ms_p95": round(write_ms[int(0.95 * (len(write_ms) - 1))], 2),
        }
        return {
            "per_row": marginal(before, after),
            "columns": column_bytes(engine),
            "sizes": after,
            "write_batch": timing,
        }
    finally:
        engine.dispose()


def measure_redis(url: str, entries: int, records: Sequence[Any]) -> dict[str, Any]:
    from steelcore.alarm_message import Alarm
    from steelcore.redis.alarm_stream import AlarmStream
    from steelcore.redis.connection import client_from_url

    settings = Settings()
    client = client_from_url(url)
    key = f"steel:measure:{uuid.uuid4().hex[:8]}"
    stream = AlarmStream(client, key, f"{key}:live", settings.alarm_stream_maxlen)
    alarms = [
        Alarm(
            alarm_key=f"{r.frame_id}:{a.class_id}",
            frame_id=r.frame_id,
            class_id=a.class_id,
            class_name=CLASS_NAMES[a.class_id],
            probability=a.probability,
            area_px=a.area_px,
            line_id=r.line_id,
            camera_id=r.camera_id,
            coil_id=r.coil_id,
            position_m=r.position_m,
            captured_at=r.captured_at.isoformat(),
        )
        for r in records
        for a in r.alarms
    ]
    if not alarms:
        raise ValueError("the seeded frames raised no alarm; raise --frames or --defective-share")
    source = itertools.cycle(alarms)
    try:
        half = entries // 2
        stream.publish([next(source) for _ in range(half)])
        usage_half = int(client.memory_usage(key, samples=0))
        for start in range(half, entries, 500):
            stream.publish([next(source) for _ in range(min(500, entries - start))])
        usage = int(client.memory_usage(key, samples=0))
        length = int(client.xlen(key))
        per_entry = (usage - usage_half) / (length - half)
        return {
            "entries": length,
            "memory_usage_bytes": usage,
            "bytes_per_entry": round(per_entry, 1),
            "maxlen": settings.alarm_stream_maxlen,
            "bytes_at_maxlen": round(per_entry * settings.alarm_stream_maxlen),
            "redis_version": client.info("server")["redis_version"],
        }
    finally:
        client.delete(key)
        client.close()


def _fresh_database(admin_url: str, stack: ExitStack) -> str:
    from steelcore.postgres.scratch import scratch_database

    return stack.enter_context(scratch_database(admin_url, "steel_measure"))


def _embedded(kind: str, stack: ExitStack) -> str:
    from stack.postgres_server import PostgresServer
    from stack.redis_server import RedisServer
    from stack.service import free_port

    run_dir = Path(tempfile.mkdtemp(prefix="steel-measure-"))
    stack.callback(shutil.rmtree, run_dir, ignore_errors=True)  # runs after the stop below
    # As root, PostgreSQL runs as another user that must reach its data folder.
    run_dir.chmod(0o755)
    service = (PostgresServer if kind == "postgres" else RedisServer)(run_dir, free_port())
    service.start(timeout_s=60)
    stack.callback(service.stop)
    return service.url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=4000, help="frames to store (default 4000)")
    parser.add_argument(
        "--defective-share",
        type=float,
        default=KAGGLE_DEFECTIVE_SHARE,
        help="share of frames with a defect (default: Severstal train set, 0.53)",
    )
    parser.add_argument("--alarm-entries", type=int, default=5000, help="alarms to XADD (default 5000)")
    parser.add_argument("--postgres-url", help="admin URL of a server to use instead of the embedded one")
    parser.add_argument("--redis-url", help="URL of a Redis to use instead of the embedded one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=None, help="results file (default bench-results/row_bytes.json)"
    )


def run(args: argparse.Namespace) -> int:
    if args.frames < 2 * BATCH or args.alarm_entries < 2 or not 0 < args.defective_share <= 1:
        print("need --frames >= 16, --alarm-entries >= 2 and 0 < --defective-share <= 1", file=sys.stderr)
        return exit_codes.BAD_INPUT
    frames = load_frames(SEVERSTAL_SAMPLE_DIR)
    defects = load_defects(RLE_LABELS)
    jpegs = [encode_image(f, "jpeg") for f in frames]
    records = list(frame_records(args.frames, defects, jpegs, args.defective_share, args.seed))
    with ExitStack() as stack:
        pg_admin = args.postgres_url or _embedded("postgres", stack)
        postgres = measure_postgres(_fresh_database(pg_admin, stack), records)
        redis_result = measure_redis(args.redis_url or _embedded("redis", stack), args.alarm_entries, records)
    kafka = message_bytes(frames)
    defective = sum(1 for r in records if r.defects)
    result = {
        "frames": len(records),
        "defective_frames": defective,
        "defects_per_defective_frame": round(sum(len(r.defects) for r in records) / max(1, defective), 3),
        "alarms_per_defect": round(
            sum(len(r.alarms) for r in records) / max(1, sum(len(r.defects) for r in records)), 3
        ),
        "kafka_message_bytes": kafka,
        "postgres": postgres,
        "redis": redis_result,
    }
    config = {"frames": args.frames, "defective_share": args.defective_share, "seed": args.seed,
              "batch": BATCH, "real_frames": len(frames), "real_defect_frames": len(defects)}  # fmt: skip
    path = write_results(NAME, [result], config, args.json)
    per_row = postgres["per_row"]
    print_table(
        ["table", "rows added", "bytes/row total", "heap", "indexes"],
        [
            [
                t,
                per_row[t]["rows_added"],
                per_row[t]["total_bytes_per_row"],
                per_row[t]["heap_bytes_per_row"],
                per_row[t]["indexes_bytes_per_row"],
            ]
            for t in MEASURED_TABLES
        ],
        title="Postgres, marginal bytes per row (pg_total_relation_size = heap + indexes + TOAST)",
    )
    print_table(
        ["encoding", "median bytes", "min", "max", "decode ms"],
        [[e, v["median"], v["min"], v["max"], v["decode_ms_median"]] for e, v in kafka.items()],
        title=f"Kafka message value per frame ({len(frames)} real Severstal frames)",
    )
    write = postgres["write_batch"]
    print(
        f"DefectStore.write_batch of {write['batch']} frames: median {write['write_ms_median']} ms, "
        f"p95 {write['write_ms_p95']} ms"
    )
    print(
        f"Redis {redis_result['redis_version']}: {redis_result['bytes_per_entry']} bytes per alarm entry; "
        f"MAXLEN {redis_result['maxlen']} -> {redis_result['bytes_at_maxlen'] / 2**20:.1f} MiB"
    )
    print(f"machine: {machine_info()['platform']}; results in {path}")
    return exit_codes.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="measure_row_bytes.py", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
