"""The one settings object. Every default lives here; environment variables use the STEEL_ prefix.

An unset service URL (Kafka, Triton, Postgres, Redis) means "start and use the embedded
service"; set it to point at a production service instead, e.g.
``STEEL_KAFKA_URL=kafka-1:9092,kafka-2:9092``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, IPvAnyNetwork, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from steelcore.paths import MODELS_DIR, REPO_ROOT, TRITON_REPOSITORY

FourFloats = tuple[float, float, float, float]
FourInts = tuple[int, int, int, int]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEEL_", env_file=None, extra="ignore")

    # --- service locations (None = embedded) -------------------------------------------
    kafka_url: str | None = Field(None, description="Kafka bootstrap servers; unset = embedded Tansu broker")
    triton_url: str | None = Field(None, description="Triton host:port (gRPC or HTTP); unset = embedded")
    # URLs that may carry a password are SecretStr: they print as '**********' in reprs, logs and
    # model dumps; steelcore.settings.reveal gives the value to the code that connects.
    postgres_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of the defect DB; unset = embedded"
    )
    redis_url: SecretStr | None = Field(
        None, description="redis://[:password@]host:port/db; unset = embedded"
    )

    # --- embedded stack ----------------------------------------------------------------
    run_dir: Path = Field(REPO_ROOT / ".steel-run", description="state, logs and data of the embedded stack")
    kafka_port: int = 9092
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    postgres_port: int = 5433
    embedded_postgres_home: Path = Field(
        Path("/var/lib/steel-embedded-postgres"),
        description="as root only: a root-owned folder for the server's programs (and its data when "
        "run_dir lies in a folder others may not pass), reachable by the server's system user",
    )
    redis_port: int = 6380

    # --- Kafka client security, passed through to every client ---------------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None

    # --- topics, streams, channels -------------------------------------------------------
    frames_topic: str = "steel.frames"
    truth_topic: str = "steel.frames.truth"
    dead_letter_topic: str = "steel.frames.dead-letter"
    frames_partitions: int = 4
    consumer_group: str = "steel-workers"
    alarm_stream: str = "steel:alarms"
    alarm_stream_maxlen: int = Field(
        100_000,
        ge=0,
        description="entries the alarm stream keeps once every consumer group has acknowledged them; "
        "an entry some group still owes is never trimmed for this cap (steelcore.redis.alarm_stream)",
    )
    alarm_stream_max_age_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="an alarm stream entry older than this is trimmed even unacknowledged, and counted "
        "as lost (steel_worker_alarms_trimmed_unacknowledged_total); far above any actuator outage",
    )
    alarm_channel: str = "steel:alarms:live"
    actuator_group: str = "steel-actuators"
    alarm_relay_interval_s: float = Field(
        2.0, gt=0, description="how often each worker relays the alarm outbox and trims the alarm stream"
    )
    alarm_relay_min_age_s: float = Field(
        5.0,
        ge=0,
        description="a stored alarm still unpublished this long after it was raised is published by "
        "the relay (the worker that stored it publishes within milliseconds unless it died or is "
        "held by an outage)",
    )
    alarm_relay_batch: int = Field(500, gt=0, description="most alarms one relay pass publishes")

    # --- topic rotation: bounded memory on a broker without retention (steelcore.kafka.topic_rotation) ---
    topic_rotation_s: float | None = Field(
        None,
        ge=0,
        description="seconds per time bucket of the frames and truth topics ('{topic}.{bucket}'); "
        "0 = one topic each, retention left to the broker; unset = embedded_topic_rotation_s on the "
        "embedded broker, 0 on a real Kafka",
    )
    embedded_topic_rotation_s: float = Field(300.0, gt=0, description="bucket length on the embedded broker")
    topic_close_grace_s: float = Field(
        30.0,
        gt=0,
        description="a bucket may still receive deliveries this long after it ends (the camera "
        "producer's delivery timeout while rotating); only then is it closed",
    )
    topic_janitor_interval_s: float = Field(
        10.0, gt=0, description="how often each worker checks which buckets are drained and deletes them"
    )

    # --- inference -----------------------------------------------------------------------
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_model: str = "steel_ensemble"
    triton_timeout_s: float = 10.0
    model_name: str = Field("default", description="shipped model served and used by `steel predict`")
    models_dir: Path = MODELS_DIR
    triton_repository: Path = TRITON_REPOSITORY
    triton_serving_repository: Path | None = Field(
        None,
        description="the mutable repository Triton serves and `steel models` rewrites; unset = a copy of "
        "triton_repository in the embedded stack's run directory (deploy: the volume Triton serves)",
    )

    # --- model lifecycle: versions, shadow runs, promotion (stack.model_lifecycle) --------
    shadow_share: float = Field(
        0.1, gt=0, le=1, description="share of live frames a shadow version also judges by default"
    )
    promote_gate_min_verdicts: int = Field(
        10, ge=0, description="operator verdicts on shadowed frames below which a promotion is refused"
    )
    model_roles_poll_s: float = Field(
        5.0, gt=0, description="how often a worker reads which versions serve production and shadow"
    )
    shadow_queue_frames: int = Field(
        64, ge=1, description="frames a worker holds for the shadow version; beyond, they are dropped"
    )

    # --- alarm rule, per class 1..4: fires when probability and area both reach these ----
    alarm_min_probability: FourFloats = (0.5, 0.5, 0.5, 0.5)
    alarm_min_area_px: FourInts = (200, 200, 400, 2000)

    # --- drift: is each camera still showing what the model was trained on (workers.drift_monitor) ---
    drift_reference_path: Path | None = Field(
        None,
        description="the drift reference of the served model; unset = models_dir/model_name/"
        "drift_reference.json; missing = no drift monitoring (the worker says so at start)",
    )
    drift_window_frames: int = Field(
        300, ge=10, description="frames per camera (as one worker sees them) a drift statistic averages"
    )
    drift_raise_z: float = Field(
        1.5,
        gt=0,
        description="an input statistic drifts when its window mean is this many reference spreads off",
    )
    drift_clear_z: float = Field(1.0, ge=0, description="... and is back when within this many")
    drift_raise_share: float = Field(
        0.25,
        gt=0,
        description="an output share (defects of a class, unsure frames) drifts this far above reference",
    )
    drift_clear_share: float = Field(0.15, ge=0, description="... and is back when within this")
    inspection_alarm_stream: str = "steel:inspection-alarms"

    # --- synthetic cameras (`steel produce`, `steel demo`) -----------------------------
    # 0.256 m of strip per 256-px frame at ~1 mm/px: 4 frames/s covers a 1 m/s line without gaps.
    camera_fps: float = 4.0
    line_speed_m_s: float = 1.0
    coil_length_m: float = 500.0

    # --- workers ----------------------------------------------------------------------------
    worker_metrics_port: int = Field(0, description="Prometheus /metrics port of `steel work`; 0 = off")
    worker_metrics_address: str = Field(
        "127.0.0.1", description="address /metrics listens on; 0.0.0.0 where Prometheus scrapes remotely"
    )
    worker_liveness_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a worker's /livez answers 503 once its consume loop made no progress for this long "
        "(the loop also counts as progressing while it holds a batch through an outage)",
    )
    latency_target_s: float = Field(
        0.5,
        gt=0,
        description="camera-to-alarm p99 target, seconds: workers size their batches to meet it "
        "(workers.batch_policy), and the live and health pages show the consumer lag red past it",
    )
    overload_hold_s: float = Field(
        15.0,
        gt=0,
        description="a worker whose frames stay past latency_target_s this long without the wait "
        "shrinking reports an overload (error log, steel_worker_overloaded, the health page)",
    )
    max_capture_ahead_s: float = Field(
        60.0,
        gt=0,
        description="a frame whose captured_at is more than this many seconds ahead of the worker's "
        "clock (a camera clock set wrong) is dead-lettered: stored, it would pin the live page's "
        "current coil and make the event lag negative",
    )

    worker_db_password: SecretStr | None = Field(
        None,
        description="password `python -m steelcore.postgres.migrate roles` sets on the workers' login "
        "steel_worker (member of steel_writer); unset = leave it as it is",
    )

    # --- dashboard ------------------------------------------------------------------------
    dashboard_address: str = Field("127.0.0.1", description="address `steel dashboard` listens on")
    dashboard_port: int = Field(8501, ge=1, le=65535, description="port `steel dashboard` listens on")
    dashboard_refresh_s: float = Field(1.5, ge=0.5, le=60.0, description="live page refresh period, seconds")
    dashboard_window_s: float = Field(
        300.0, ge=10.0, le=86400.0, description="rolling window of the live page's rates, seconds"
    )
    dashboard_models_window_s: float = Field(
        3600.0,
        ge=60.0,
        le=7 * 86400.0,
        description="shadowed frames the health page's model agreement and verdict figures cover, seconds",
    )
    dashboard_auth: Literal["auto", "on", "off"] = Field(
        "auto", description="password login: auto = on when listening beyond localhost"
    )
    dashboard_password: SecretStr | None = Field(None, description="login password (or use the file)")
    dashboard_password_file: Path | None = Field(None, description="file holding the login password")
    dashboard_trusted_proxies: tuple[IPvAnyNetwork, ...] = Field(
        (),
        description="proxies (addresses or networks) whose X-Forwarded-For names the client for the "
        "login throttle; unset = the TCP peer is the client",
    )
    dashboard_db_url: SecretStr | None = Field(
        None, description="read-only login URL; unset = the defect DB URL as role steel_dashboard"
    )
    dashboard_redis_url: SecretStr | None = Field(
        None,
        description="Redis URL of the dashboard's own ACL user (steel-dashboard: XLEN and XPENDING on "
        "the alarm stream, PING); unset = the embedded server's dashboard user, else STEEL_REDIS_URL",
    )
    dashboard_feedback_db_url: SecretStr | None = Field(
        None, description="feedback writer login URL; unset = the defect DB URL as role steel_feedback"
    )
    dashboard_worker_metrics_urls: tuple[str, ...] = Field(
        (), description="workers' Prometheus endpoints (http://host:port/metrics) for the health page"
    )
    frame_image_retention_days: float = Field(
        14.0, gt=0, description="images of defective frames are kept this long; rows stay"
    )
    frame_retention_days: float = Field(
        90.0,
        ge=0,
        description="`steel maintain` drops the weekly frames partitions (with their defects, alarms and "
        "feedback) whose whole week is older than this; 0 = keep forever. A quarter: one reference "
        "line at 2 % defective then fits the shipped 500 GiB Postgres volume (docs/capacity.md, "
        "section 5); a year needs about 1 TB",
    )

    # --- input limits ---------------------------------------------------------------------
    max_frame_bytes: int = 8 * 1024 * 1024


def reveal(value: SecretStr | str | None) -> str | None:
    """The plain text of a secret setting, for the code that connects with it (never print it).
    A plain str passes through: ``model_copy(update=...)`` does not validate, so a copy may hold one."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def redact_url(url: str | None) -> str:
    """A URL safe to print: the password, if any, replaced by ***."""
    if not url:
        return "(embedded)"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
