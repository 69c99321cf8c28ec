"""Where each service is: the URL set in settings, else the embedded one `steel up` recorded.

`steel up` writes ``run_dir/stack.json`` (mode 0600: it holds the embedded Redis password):

    {"services": {"kafka": {"url": "127.0.0.1:9092", "pid": 123, ...},
                  "triton": {"url": ..., "grpc_url": ..., "http_url": ..., "metrics_url": ...}, ...}}

This module reads and writes that file; everything else asks ``resolve_url``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

from steelcore.errors import ExternalServiceError
from steelcore.settings import Settings, get_settings, reveal

Service = Literal["kafka", "postgres", "redis", "triton"]
SERVICES: tuple[Service, ...] = get_args(Service)
STACK_FILE_NAME = "stack.json"
_ENV_NAMES = {name: f"STEEL_{name.upper()}_URL" for name in SERVICES}


class ServiceUnavailableError(ExternalServiceError, LookupError):
    """No URL for a service: not configured in settings and not started by `steel up`."""


def stack_file(run_dir: Path) -> Path:
    return Path(run_dir) / STACK_FILE_NAME


def read_stack(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The embedded services recorded under run_dir ({} when the stack is not up)."""
    path = stack_file(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ServiceUnavailableError(
            f"{path} is not valid JSON ({exc}); run `steel down` and `steel up`"
        ) from exc
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        raise ServiceUnavailableError(f"{path} has no 'services' object; run `steel down` and `steel up`")
    return services


def write_stack(run_dir: Path, services: dict[str, dict[str, Any]]) -> Path:
    """Record the embedded services atomically, readable by the owner only."""
    path = stack_file(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"services": services}, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def is_embedded(service: Service, settings: Settings | None = None) -> bool:
    """True when settings leave the service's URL unset, i.e. the embedded one is meant."""
    settings = settings or get_settings()
    return not _configured_url(service, settings)


def resolve_url(service: Service, settings: Settings | None = None) -> str:
    """The URL clients of ``service`` should use.

    Kafka: bootstrap servers ("host:port[,host:port]"); Postgres: a SQLAlchemy URL; Redis:
    redis://[:password@]host:port/db; Triton: host:port for settings.triton_protocol.
    """
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    settings = settings or get_settings()
    configured = _configured_url(service, settings)
    if configured:
        return configured
    record = read_stack(settings.run_dir).get(service)
    if record is None:
        raise ServiceUnavailableError(
            f"no {service} URL: {_ENV_NAMES[service]} is unset and the embedded {service} is not recorded in "
            f"{stack_file(settings.run_dir)}; run `steel up` or set {_ENV_NAMES[service]}"
        )
    key = f"{settings.triton_protocol}_url" if service == "triton" else "url"
    url = record.get(key)
    if not isinstance(url, str) or not url:
        raise ServiceUnavailableError(f"{stack_file(settings.run_dir)}: {service} has no {key!r}")
    return url


def kafka_bootstrap(settings: Settings | None = None) -> str:
    return resolve_url("kafka", settings)


def postgres_url(settings: Settings | None = None) -> str:
    """SQLAlchemy URL of the defect database."""
    return resolve_url("postgres", settings)


def postgres_dsn(settings: Settings | None = None) -> str:
    """The same database as a libpq URL, for psycopg.connect, psql and pg_dump."""
    return libpq_url(postgres_url(settings))


def redis_url(settings: Settings | None = None) -> str:
    return resolve_url("redis", settings)


def triton_url(settings: Settings | None = None) -> str:
    return resolve_url("triton", settings)


def libpq_url(sqlalchemy_url: str) -> str:
    """Drop the SQLAlchemy driver suffix: postgresql+psycopg://... -> postgresql://..."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    if not sep:
        raise ValueError(f"not a URL: {sqlalchemy_url!r}")
    return f"{scheme.split('+', 1)[0]}://{rest}"


def _configured_url(service: Service, settings: Settings) -> str | None:
    value = reveal(getattr(settings, f"{service}_url"))
    return value.strip() if isinstance(value, str) and value.strip() else None
