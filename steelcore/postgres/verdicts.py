"""Operator verdicts: an alarm or a defect marked "confirmed" or "false", and the latest verdict of
each defect, the one query the dashboard's feedback and the promotion gate's evidence
(steelcore.postgres.model_evidence) both read verdicts through.

The write path is deliberately narrow: ``record_feedback`` is the dashboard's only write, through
an engine logged in as ``steel_feedback`` (steelcore.postgres.engine), a role that may INSERT into
``feedback`` and do nothing else. Feedback is append-only; a later verdict on the same defect
supersedes an earlier one (``latest_verdicts``), so a mistaken click is corrected by clicking again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, Row, Select, func, insert, literal, select, union_all
from sqlalchemy.exc import IntegrityError

from steelcore.errors import SteelError
from steelcore.postgres.schema import VERDICTS, alarm_defect, alarms, defects, feedback

Verdict = Literal["confirmed", "false"]
MAX_OPERATOR_CHARS = 64
MAX_NOTE_CHARS = 500


# The operator's input is wrong, the database is fine: a ValueError, not a PostgresError
# (steelcore.postgres.exceptions), so nothing retries it.
class FeedbackError(SteelError, ValueError):
    """The feedback names something that does not exist or is malformed."""


@dataclass(frozen=True)
class DefectVerdict:
    defect_id: int
    verdict: Verdict
    operator: str
    created_at: datetime
    via: Literal["defect", "alarm"]  # marked on the defect itself or on its alarm


def record_feedback(
    writer: Engine,
    *,
    verdict: str,
    operator: str,
    defect_id: int | None = None,
    alarm_id: int | None = None,
    note: str | None = None,
) -> None:
    """Store one verdict on exactly one defect or alarm. Raises FeedbackError for a bad verdict,
    operator or note, for both or neither target given, and for a target that does not exist."""
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if (defect_id is None) == (alarm_id is None):
        raise FeedbackError("give exactly one of defect_id and alarm_id")
    name = operator.strip()
    if not name:
        raise FeedbackError("operator name is empty")
    if len(name) > MAX_OPERATOR_CHARS or not name.isprintable():
        raise FeedbackError(f"operator name must be printable and at most {MAX_OPERATOR_CHARS} characters")
    text = (note or "").strip() or None
    if text is not None and len(text) > MAX_NOTE_CHARS:
        raise FeedbackError(f"note must be at most {MAX_NOTE_CHARS} characters, got {len(text)}")
    row = {"defect_id": defect_id, "alarm_id": alarm_id, "verdict": verdict, "operator": name, "note": text}
    try:
        # inline(): no implicit RETURNING of the new id, which would need SELECT on feedback.
        with writer.begin() as conn:
            conn.execute(insert(feedback).inline(), row)
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == "23503":  # foreign_key_violation
            target = f"defect {defect_id}" if defect_id is not None else f"alarm {alarm_id}"
            raise FeedbackError(f"{target} does not exist (deleted or never stored)") from None
        raise


def defect_verdicts(reader: Engine, defect_ids: Sequence[int] | None = None) -> dict[int, DefectVerdict]:
    """The latest verdict of each defect, whether given on the defect or on its alarm.
    Only defects with feedback appear; ``defect_ids`` restricts the lookup (None = all)."""
    conditions = []
    if defect_ids is not None:
        if not defect_ids:
            return {}
        conditions.append(defects.c.defect_id.in_(sorted(set(defect_ids))))
    latest = latest_verdicts(*conditions)
    with reader.connect() as conn:
        return {
            int(r.defect_id): DefectVerdict(r.defect_id, r.verdict, r.operator, r.created_at, r.via)
            for r in conn.execute(latest)
        }


def latest_verdicts(*conditions: ColumnElement[bool]) -> Select:
    """defect_id, frame_id, class_id, verdict, operator, created_at and via ("defect" or "alarm")
    of the newest verdict of each defect that meets ``conditions`` (on the ``defects`` table);
    defects without feedback are absent."""
    columns = (
        defects.c.defect_id,
        defects.c.frame_id,
        defects.c.class_id,
        feedback.c.verdict,
        feedback.c.operator,
        feedback.c.created_at,
        feedback.c.feedback_id,
    )
    on_defect = (
        select(*columns, literal("defect").label("via"))
        .select_from(feedback.join(defects, defects.c.defect_id == feedback.c.defect_id))
        .where(*conditions)
    )
    on_alarm = (
        select(*columns, literal("alarm").label("via"))
        .select_from(
            feedback.join(alarms, alarms.c.alarm_id == feedback.c.alarm_id).join(defects, alarm_defect)
        )
        .where(*conditions)
    )
    given = union_all(on_defect, on_alarm).subquery()
    rank = (
        func.row_number()
        .over(
            partition_by=given.c.defect_id, order_by=(given.c.created_at.desc(), given.c.feedback_id.desc())
        )
        .label("rank")
    )
    ranked = select(given, rank).subquery()
    return select(
        ranked.c.defect_id,
        ranked.c.frame_id,
        ranked.c.class_id,
        ranked.c.verdict,
        ranked.c.operator,
        ranked.c.created_at,
        ranked.c.via,
    ).where(ranked.c.rank == 1)


def defects_without_verdict(
    engine: Engine, line_id: str, since: datetime, limit: int = 2000
) -> list[Row[Any]]:
    """(defect_id, frame_id, class_id) rows of the line's defects captured since ``since`` that have
    no verdict given on the defect itself, oldest first."""
    has_feedback = select(feedback.c.feedback_id).where(feedback.c.defect_id == defects.c.defect_id)
    stmt = (
        select(defects.c.defect_id, defects.c.frame_id, defects.c.class_id)
        .where(defects.c.line_id == line_id, defects.c.captured_at >= since, ~has_feedback.exists())
        .order_by(defects.c.captured_at)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())
