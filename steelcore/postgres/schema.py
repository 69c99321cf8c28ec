"""The defect database: SQLAlchemy Core tables, the one description of the schema.

Alembic revisions in ``steelcore/postgres/migrations`` create exactly these tables; a test compares the two.

Design choices a reader should know:
- ``frames.frame_id`` is the natural key carried in the Kafka message, so a redelivered frame is
  recognised by the database itself (``INSERT ... ON CONFLICT DO NOTHING``), not by worker state.
- ``frames`` is partitioned by RANGE (captured_at), one partition per UTC week plus a DEFAULT one
  (revision 0004; ``steel maintain`` creates weeks ahead and drops those past retention,
  steelcore.postgres.partitions). Its key is therefore (frame_id, captured_at); a redelivered frame
  carries its message's captured_at, so the conflict still catches it. ``defects`` references
  frames by (frame_id, captured_at); ``frame_images`` by nothing (see revision 0004).
- Frames, defects and alarms are insert-only facts. ``defects`` copies the frame's ``captured_at``,
  ``line_id``, ``camera_id`` and ``coil_id``: history queries filter defects by those, and the copy
  lets one composite index (class + time, line/camera + time) answer them without a join. The copy
  is written in the same statement batch as the frame and never updated, so it cannot drift.
- ``alarms`` doubles as an outbox: a row with ``published_at IS NULL`` was stored but not yet
  confirmed on the Redis stream, so a relay can publish it after a crash.
- ``frame_images`` keeps the received image bytes of frames with a defect (the dashboard's
  overlays and the retraining export need them) for a limited time; see steelcore.postgres.frame_images.
- All times are ``timestamptz``; callers pass aware datetimes.
"""

from __future__ import annotations

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    and_,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

# Stable constraint names keep Alembic diffs and error messages readable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

VERDICTS = ("confirmed", "false")

_NOW = text("now()")


def _tstz(name: str, *, nullable: bool = False, server_default: bool = False) -> Column:
    return Column(
        name, DateTime(timezone=True), nullable=nullable, server_default=_NOW if server_default else None
    )


lines = Table(
    "lines",
    metadata,
    Column("line_id", Text, primary_key=True),
    _tstz("first_seen_at", server_default=True),
)

cameras = Table(
    "cameras",
    metadata,
    Column("line_id", Text, ForeignKey("lines.line_id"), primary_key=True),
    Column("camera_id", Text, primary_key=True),
    _tstz("first_seen_at", server_default=True),
)

coils = Table(
    "coils",
    metadata,
    Column("coil_id", Text, primary_key=True),
    Column("line_id", Text, ForeignKey("lines.line_id"), nullable=False),
    _tstz("first_seen_at", server_default=True),
)

frames = Table(
    "frames",
    metadata,
    Column("frame_id", Text, primary_key=True),
    Column("line_id", Text, nullable=False),
    Column("camera_id", Text, nullable=False),
    Column("coil_id", Text, ForeignKey("coils.coil_id"), nullable=False),
    Column("position_m", REAL, nullable=False),
    Column("height", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("captured_at", DateTime(timezone=True), primary_key=True),  # the partition key
    _tstz("received_at"),
    # Server clock at the start of the writing transaction: one value per batch.
    _tstz("stored_at", server_default=True),
    Column("decode_ms", REAL),
    Column("infer_ms", REAL),
    Column("store_ms", REAL),
    Column("model_name", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    # One probability per class id (index 0 = class 1); NULL when the model has no classifier.
    Column("class_probs", ARRAY(REAL)),
    # Where the frame image is kept outside this database (object-store key or path); NULL when it
    # was not kept there. Images kept in the database itself are rows of ``frame_images``.
    Column("image_ref", Text),
    ForeignKeyConstraint(["line_id", "camera_id"], ["cameras.line_id", "cameras.camera_id"]),
    CheckConstraint("position_m >= 0", name="position_non_negative"),
    CheckConstraint("height > 0 AND width > 0", name="size_positive"),
    Index(None, "captured_at"),
    Index(None, "coil_id", "position_m"),
    Index(None, "line_id", "camera_id", "captured_at"),
    postgresql_partition_by="RANGE (captured_at)",
)

defects = Table(
    "defects",
    metadata,
    Column("defect_id", BigInteger, Identity(), primary_key=True),
    Column("frame_id", Text, nullable=False),
    Column("class_id", SmallInteger, nullable=False),
    # Copied from the frame (see module docstring).
    _tstz("captured_at"),
    Column("line_id", Text, nullable=False),
    Column("camera_id", Text, nullable=False),
    Column("coil_id", Text, nullable=False),
    # Severstal RLE: column-major, 1-indexed "start length" pairs (steelcore.rle).
    Column("rle", Text, nullable=False),
    Column("area_px", Integer, nullable=False),
    Column("bbox_x0", Integer, nullable=False),
    Column("bbox_y0", Integer, nullable=False),
    Column("bbox_x1", Integer, nullable=False),
    Column("bbox_y1", Integer, nullable=False),
    Column("probability", REAL, nullable=False),
    Column("severity", REAL, nullable=False),
    UniqueConstraint("frame_id", "class_id"),
    ForeignKeyConstraint(
        ["frame_id", "captured_at"], ["frames.frame_id", "frames.captured_at"], ondelete="CASCADE"
    ),
    CheckConstraint("class_id >= 1", name="class_id_positive"),
    CheckConstraint("area_px > 0", name="area_positive"),
    CheckConstraint(
        "0 <= bbox_x0 AND bbox_x0 <= bbox_x1 AND 0 <= bbox_y0 AND bbox_y0 <= bbox_y1", name="bbox_ordered"
    ),
    CheckConstraint("probability >= 0 AND probability <= 1", name="probability_range"),
    CheckConstraint("severity >= 0 AND severity <= 1", name="severity_range"),
    Index(None, "captured_at"),
    Index(None, "class_id", "captured_at"),
    Index(None, "coil_id", "class_id"),
    # A coil's defects newest first (the dashboard's coil filter pages by time): without it the
    # planner walks ix_defects_captured_at and filters, 100 ms at 1 M rows (steel bench queries).
    Index(None, "coil_id", "captured_at"),
    Index(None, "line_id", "camera_id", "captured_at"),
)

# How a defect meets its frame: the whole foreign key, so the planner prunes frames' partitions to
# the defect's week instead of probing every partition's index for the frame_id.
defect_frame = and_(frames.c.frame_id == defects.c.frame_id, frames.c.captured_at == defects.c.captured_at)

# What the mask said about a defect: read with the defect history and with a frame's details.
defect_measures = (
    defects.c.area_px,
    defects.c.bbox_x0,
    defects.c.bbox_y0,
    defects.c.bbox_x1,
    defects.c.bbox_y1,
    defects.c.probability,
    defects.c.severity,
)

alarms = Table(
    "alarms",
    metadata,
    Column("alarm_id", BigInteger, Identity(), primary_key=True),
    Column("frame_id", Text, nullable=False),
    Column("class_id", SmallInteger, nullable=False),
    Column("probability", REAL, nullable=False),
    Column("area_px", Integer, nullable=False),
    _tstz("raised_at"),
    # Redis stream entry id once XADD succeeded; NULL = still to publish (outbox).
    Column("stream_entry_id", Text),
    _tstz("published_at", nullable=True),
    _tstz("acknowledged_at", nullable=True),
    Column("acknowledged_by", Text),
    UniqueConstraint("frame_id", "class_id"),
    # An alarm always points at the defect that fired it.
    ForeignKeyConstraint(
        ["frame_id", "class_id"], ["defects.frame_id", "defects.class_id"], ondelete="CASCADE"
    ),
    CheckConstraint("(acknowledged_at IS NULL) = (acknowledged_by IS NULL)", name="ack_complete"),
    Index(None, "raised_at"),
    Index("ix_alarms_unpublished", "raised_at", postgresql_where=text("published_at IS NULL")),
)

# How an alarm meets the defect that fired it, and an alarm with where that defect was seen: what
# the outbox relays and what the live page lists.
alarm_defect = and_(defects.c.frame_id == alarms.c.frame_id, defects.c.class_id == alarms.c.class_id)
alarm_columns = (
    alarms.c.alarm_id,
    alarms.c.frame_id,
    alarms.c.class_id,
    alarms.c.probability,
    alarms.c.area_px,
    alarms.c.raised_at,
    defects.c.line_id,
    defects.c.camera_id,
    defects.c.coil_id,
)

feedback = Table(
    "feedback",
    metadata,
    Column("feedback_id", BigInteger, Identity(), primary_key=True),
    Column("defect_id", BigInteger, ForeignKey("defects.defect_id", ondelete="CASCADE")),
    Column("alarm_id", BigInteger, ForeignKey("alarms.alarm_id", ondelete="CASCADE")),
    Column("verdict", Text, nullable=False),
    Column("operator", Text, nullable=False),
    _tstz("created_at", server_default=True),
    Column("note", Text),
    CheckConstraint("num_nonnulls(defect_id, alarm_id) = 1", name="one_target"),
    CheckConstraint(f"verdict IN ({', '.join(repr(v) for v in VERDICTS)})", name="verdict_known"),
    Index(None, "defect_id"),
    Index(None, "alarm_id"),
)

# Encodings a stored frame image may have: the Kafka message's bytes are kept as received.
IMAGE_ENCODINGS = ("jpeg", "png", "raw")

# The image of each frame with at least one defect, written in the frame's transaction and purged
# after a retention period (steelcore.postgres.frame_images). Kept apart from ``frames`` so that history
# queries never read image bytes, and so a purge deletes whole rows instead of bloating frames.
frame_images = Table(
    "frame_images",
    metadata,
    # No foreign key to frames: partitioned, its key includes captured_at (see revision 0004).
    Column("frame_id", Text, primary_key=True),
    Column("encoding", Text, nullable=False),
    Column("image", LargeBinary, nullable=False),
    _tstz("stored_at", server_default=True),
    CheckConstraint(f"encoding IN ({', '.join(repr(e) for e in IMAGE_ENCODINGS)})", name="encoding_known"),
    CheckConstraint("length(image) > 0", name="image_not_empty"),
    Index(None, "stored_at"),
)

# --- model lifecycle (issue 16, revision 0005) -------------------------------------------------------
# A model version is an integer V >= 1 naming one registered bundle; Triton serves it as version V of
# the classifier/segmenter/postprocess/steel_cascade models (stack.model_lifecycle). The lifecycle CLI
# writes these tables as the owner; workers only read versions and roles and insert shadow results.

MODEL_ROLES = ("production", "shadow")
MODEL_AUDIT_ACTIONS = ("register", "shadow", "stop_shadow", "promote", "rollback")

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("bundle", Text, nullable=False),
    _tstz("registered_at"),
    Column("registered_by", Text, nullable=False),
    # "HxW" of the frames the bundle takes, e.g. "256x1600": a candidate must match production's.
    Column("input_shape", Text, nullable=False),
    Column("class_ids", ARRAY(SmallInteger), nullable=False),
    CheckConstraint("version >= 1", name="version_positive"),
)

# At most one row per role, so "which version serves production" is one primary-key lookup.
model_roles = Table(
    "model_roles",
    metadata,
    Column("role", Text, primary_key=True),
    Column("version", Integer, ForeignKey("model_versions.version"), nullable=False),
    # Share of live frames the shadow also judges; production judges every frame, so NULL there.
    Column("share", REAL),
    _tstz("since"),
    Column("set_by", Text, nullable=False),
    CheckConstraint(f"role IN ({', '.join(repr(r) for r in MODEL_ROLES)})", name="role_known"),
    CheckConstraint(
        "(role = 'production' AND share IS NULL) OR (role = 'shadow' AND share > 0 AND share <= 1)",
        name="share_fits_role",
    ),
)

model_audit = Table(
    "model_audit",
    metadata,
    Column("audit_id", BigInteger, Identity(), primary_key=True),
    _tstz("at"),
    Column("action", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("previous_version", Integer),
    Column("actor", Text, nullable=False),
    Column("forced", Boolean, nullable=False, server_default=text("false")),
    # The shadow figures at the moment of a promotion (agreement, verdict precision/recall).
    Column("figures", JSONB),
    CheckConstraint(f"action IN ({', '.join(repr(a) for a in MODEL_AUDIT_ACTIONS)})", name="action_known"),
    Index(None, "at"),
)

# The shadow version's answers, kept apart from frames/defects so they never raise alarms nor count as
# production results. No foreign key to frames: written after the frame's batch, best effort, and
# frames' partitions are dropped by retention independently.
shadow_results = Table(
    "shadow_results",
    metadata,
    Column("frame_id", Text, primary_key=True),
    Column("captured_at", DateTime(timezone=True), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    _tstz("judged_at"),
    # Index 0 = class 1, as frames.class_probs.
    Column("class_probs", ARRAY(REAL), nullable=False),
    Column("pixel_counts", ARRAY(Integer), nullable=False),
    # Severstal RLE per class ("" = empty mask), index 0 = class 1.
    Column("rles", ARRAY(Text), nullable=False),
    Index(None, "captured_at"),
)

TABLES = (
    lines,
    cameras,
    coils,
    frames,
    defects,
    alarms,
    feedback,
    frame_images,
    model_versions,
    model_roles,
    model_audit,
    shadow_results,
)
