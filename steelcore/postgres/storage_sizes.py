"""How much room the defect tables take, for scripts/measure_row_bytes.py (bytes per stored frame).

The size functions take no parameter for a table name, so names are formatted into the statement:
they are checked against the schema's tables first, never taken as given.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, text

from steelcore.postgres.schema import metadata

# Average stored size (pg_column_size: after compression) of the wide columns and of whole tuples.
COLUMN_QUERIES = {
    "frames_tuple": "SELECT avg(pg_column_size(t.*)) FROM frames t",
    "defects_tuple": "SELECT avg(pg_column_size(t.*)) FROM defects t",
    "defects_rle_stored": "SELECT avg(pg_column_size(rle)) FROM defects",
    "defects_rle_text": "SELECT avg(octet_length(rle)) FROM defects",
    "alarms_tuple": "SELECT avg(pg_column_size(t.*)) FROM alarms t",
    "frame_images_image_stored": "SELECT avg(pg_column_size(image)) FROM frame_images",
    "frame_images_image_bytes": "SELECT avg(octet_length(image)) FROM frame_images",
}


def table_sizes(engine: Engine, tables: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per table: rows, and bytes in total (heap + indexes + TOAST), heap and indexes."""
    unknown = [t for t in tables if t not in metadata.tables]
    if unknown:
        raise ValueError(f"not tables of the schema: {', '.join(unknown)}")
    sizes = {}
    with engine.connect() as conn:
        for table in tables:
            rows = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            # Summed over the table and its partitions: a partitioned table (frames) stores
            # nothing itself, its partitions do (pg_partition_tree lists none for a plain table).
            total, heap, indexes = conn.execute(
                text(
                    "SELECT sum(pg_total_relation_size(r)), sum(pg_relation_size(r)), "
                    "sum(pg_indexes_size(r)) FROM (SELECT relid AS r FROM "
                    f"pg_partition_tree('{table}') UNION SELECT '{table}'::regclass) t"
                )
            ).one()
            total, heap, indexes = int(total), int(heap), int(indexes)
            sizes[table] = {"rows": rows, "total": total, "heap": heap, "indexes": indexes}
    return sizes


def column_bytes(engine: Engine) -> dict[str, float]:
    """Average stored size of the wide columns and of whole tuples (COLUMN_QUERIES)."""
    with engine.connect() as conn:
        return {
            name: float(conn.execute(text(sql)).scalar_one() or 0.0) for name, sql in COLUMN_QUERIES.items()
        }
