"""Security on the embedded stack: database roles (workers write, the dashboard reads) and secrets
that never reach an output.

Covered elsewhere: Redis refuses a client without the password or with a wrong one, and `steel
up` / `steel status` never print the generated Redis password (test_embedded_stack.py); Kafka
SASL/TLS settings reach every client config (unit/test_kafka_client_config.py) and every client in the
product is built from those configs (unit/test_kafka_bounds.py); the dashboard login
(unit/test_dashboard_parts.py); size limits (unit/test_input_limits.py); no SQL built from
strings (unit/test_sql_safety.py); `steel work` never prints its database or Redis password
(every fault case, tests/faults/fault_stack.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from sqlalchemy import Engine, delete, insert, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from steelcore import exit_codes
from steelcore.postgres import migrate, schema
from steelcore.postgres.alarm_outbox import mark_alarms_published
from steelcore.postgres.defect_writes import DefectStore
from steelcore.postgres.engine import (
    DASHBOARD_ROLE,
    READ_STATEMENT_TIMEOUT_MS,
    create_db_engine,
    open_reader,
    role_url,
)
from steelcore.postgres.frame_records import AlarmRecord, DefectRecord, FrameRecord
from steelcore.postgres.roles import WORKER_ROLE, WRITER_ROLE, ensure_dashboard_roles, ensure_roles

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 1, 6, 0, tzinfo=UTC)
WRITER = WRITER_ROLE
SECRET = "s3cret-in-the-env-Zq81"


@pytest.fixture()
def worker_login(db_url: str) -> Iterator[str]:
    """A login role in the steel_writer group (how a deployment gives workers their account)."""
    migrate.upgrade(db_url)
    ensure_dashboard_roles(db_url)  # creates steel_reader/steel_writer too
    login = f"worker_{uuid.uuid4().hex[:8]}"
    admin = create_db_engine(db_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE {login} LOGIN IN ROLE {WRITER_ROLE}"))  # a generated name
    try:
        yield role_url(db_url, login)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP ROLE {login}"))
        admin.dispose()


def frame(i: int) -> FrameRecord:
    defect = DefectRecord(2, "101 5", 5, (0, 100, 0, 104), 0.8)
    return FrameRecord(
        frame_id=f"sec-{i}", line_id="L1", camera_id="top", coil_id="K1", position_m=0.5 * i,
        captured_at=T0, received_at=T0, model_name="m", model_version="1", defects=(defect,),
        alarms=(AlarmRecord(2, 0.8, 5, T0),),
    )  # fmt: skip


def test_the_worker_role_writes_frames_and_the_dashboard_role_cannot(worker_login: str, db_url: str) -> None:
    writer = create_db_engine(worker_login)
    reader = open_reader(role_url(db_url, DASHBOARD_ROLE))
    try:
        migrate.upgrade(worker_login)  # what every worker runs at start: a no-op on a migrated database
        result = DefectStore(writer).write_batch([frame(1)])
        assert result.new_frame_ids == ("sec-1",) and result.alarms_written == 1
        assert mark_alarms_published(writer, [("sec-1", 2, "1-0")]) == 1
        with pytest.raises(DBAPIError, match="permission denied"), writer.begin() as conn:
            conn.execute(delete(schema.frames))  # workers insert and update, never delete
        _assert_history_cannot_be_rewritten(writer)

        with reader.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM frames")).scalar_one() == 1
            assert (
                conn.execute(text("SHOW statement_timeout")).scalar_one()
                == f"{READ_STATEMENT_TIMEOUT_MS // 1000}s"
            )
        with pytest.raises(DBAPIError, match=r"read-only transaction|permission denied"):
            DefectStore(reader).write_batch([frame(2)])
        with pytest.raises(DBAPIError, match=r"read-only transaction|permission denied"):
            mark_alarms_published(reader, [("sec-1", 2, "2-0")])
    finally:
        writer.dispose()
        reader.dispose()


def test_the_read_only_login_carries_its_timeout_on_the_role(db_url: str) -> None:
    """Grafana connects as steel_dashboard with no session settings of its own: a plain connection
    (not open_reader) must already time out and be read-only."""
    migrate.upgrade(db_url)
    ensure_dashboard_roles(db_url)
    plain = create_db_engine(role_url(db_url, DASHBOARD_ROLE))
    try:
        with plain.connect() as conn:
            timeout = conn.execute(text("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"))
            assert int(timeout.scalar_one()) == READ_STATEMENT_TIMEOUT_MS
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
    finally:
        plain.dispose()


def _assert_history_cannot_be_rewritten(writer: Engine) -> None:
    """The writer may mark an alarm published and nothing else: every other UPDATE is refused."""
    rewrites = [
        update(schema.frames).values(coil_id="K2"),
        update(schema.defects).values(class_id=1),
        update(schema.alarms).values(probability=0.1),
        update(schema.alarms).values(acknowledged_at=T0, acknowledged_by="x"),
        update(schema.frame_images).values(encoding="raw"),
        insert(schema.feedback).values(defect_id=1, verdict="false", operator="w"),
        delete(schema.alarms),
    ]
    for statement in rewrites:
        with pytest.raises(DBAPIError, match="permission denied"), writer.begin() as conn:
            conn.execute(statement)


def test_roles_revoke_the_wide_grants_of_an_older_release(db_url: str) -> None:
    """ensure_roles makes the workers' login and narrows steel_writer even where an older release
    granted it INSERT, UPDATE on every table."""
    migrate.upgrade(db_url)
    ensure_roles(db_url)
    admin = create_db_engine(db_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {WRITER}"))
        ensure_roles(db_url)
        with admin.connect() as conn:
            member = conn.execute(
                text("SELECT pg_has_role(:login, :group, 'MEMBER')"),
                {"login": WORKER_ROLE, "group": WRITER},
            ).scalar_one()
            privileges = conn.execute(
                text(
                    "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                    "WHERE grantee = :role AND privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')"
                ),
                {"role": WRITER},
            ).all()
            columns = conn.execute(
                text(
                    "SELECT table_name, column_name FROM information_schema.column_privileges "
                    "WHERE grantee = :role AND privilege_type = 'UPDATE' ORDER BY column_name"
                ),
                {"role": WRITER},
            ).all()
            can_insert_feedback = conn.execute(
                text("SELECT has_table_privilege(:role, 'feedback', 'INSERT')"), {"role": WRITER}
            ).scalar_one()
    finally:
        admin.dispose()
    assert member is True
    assert privileges == []  # no table-wide UPDATE, DELETE or TRUNCATE left
    assert columns == [("alarms", "published_at"), ("alarms", "stream_entry_id")]
    assert can_insert_feedback is False


def _steel(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steelcore.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_secrets_in_the_environment_never_reach_output(
    kafka_url: str, postgres_url: str, redis_url: str, fresh_run_dir: Path
) -> None:
    """`steel -v up` and `steel -v status` (debug logging) against services given by URLs that
    carry passwords, with the dashboard password set too: none of them appears in any output."""
    redis_password = urlsplit(redis_url).password
    assert redis_password
    # The embedded Postgres trusts local connections, so any password is accepted (and ignored).
    db = make_url(postgres_url).set(password=SECRET).render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEEL_")}
    env.update(
        STEEL_RUN_DIR=str(fresh_run_dir),
        STEEL_KAFKA_URL=kafka_url,
        STEEL_POSTGRES_URL=db,
        STEEL_REDIS_URL=redis_url,
        STEEL_DASHBOARD_PASSWORD=SECRET + "-dash",
        STEEL_DASHBOARD_DB_URL=make_url(db)
        .set(username=DASHBOARD_ROLE)
        .render_as_string(hide_password=False),
    )
    outputs = []
    for args in (["-v", "up", "--no-triton", "--json"], ["-v", "status"], ["-v", "status", "--json"]):
        done = _steel(args, env)
        assert done.returncode == exit_codes.OK, done.stdout + done.stderr
        outputs.append(done.stdout + done.stderr)
    text_out = "\n".join(outputs)
    assert "postgres" in text_out and "redis" in text_out  # the services were reported
    for secret in (SECRET, quote(SECRET), redis_password):
        assert secret not in text_out
