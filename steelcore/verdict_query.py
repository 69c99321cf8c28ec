"""The latest operator verdict of each defect, given on the defect itself or on its alarm: the one
query the dashboard's feedback (dashboard/feedback.py) and the promotion gate
(steelcore/model_agreement.py) both read verdicts through."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, and_, func, literal, select, union_all

from steelcore.db_schema import alarms, defects, feedback


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
            feedback.join(alarms, alarms.c.alarm_id == feedback.c.alarm_id).join(
                defects,
                and_(defects.c.frame_id == alarms.c.frame_id, defects.c.class_id == alarms.c.class_id),
            )
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
