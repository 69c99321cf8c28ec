"""Each service's health, as `steel status` prints it and the dashboard's health page shows it.

``probe_service`` talks to a service the way its clients do, through the system's own package;
``service_status`` probes all four at the URLs the clients use (settings, else what `steel up`
recorded). `steel status` (stack/embedded_stack.py) adds what only the launcher knows of an
embedded service: its process and memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from steelcore.service_urls import SERVICES, Service, is_embedded, libpq_url, read_stack, resolve_url
from steelcore.settings import Settings, redact_url


@dataclass(frozen=True)
class Health:
    """One line of `steel status`."""

    name: str
    up: bool
    url: str | None  # always redacted: a Health may be printed or logged
    pid: int | None = None
    version: str | None = None
    rss_bytes: int | None = None
    embedded: bool = True
    detail: str = ""

    def __post_init__(self) -> None:
        if self.url:
            object.__setattr__(self, "url", redact_url(self.url))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_service(name: Service, url: str, settings: Settings, timeout_s: float = 3.0) -> str | None:
    """Talk to ``name`` at ``url`` as its clients would; its version. Raises on failure."""
    if name == "kafka":
        from steelcore.kafka.client_config import admin_config
        from steelcore.kafka.clients import count_brokers

        brokers = count_brokers(admin_config(settings), timeout_s)
        return f"Kafka ({brokers} brokers)"
    if name == "postgres":
        from steelcore.postgres.probe import probe_dsn

        return probe_dsn(libpq_url(url), timeout_s)
    if name == "redis":
        from steelcore.redis.connection import probe_url

        return probe_url(url, timeout_s)
    from steelcore.triton.readiness import probe_triton_grpc, probe_triton_http

    if settings.triton_protocol == "grpc":
        return probe_triton_grpc(url, settings.triton_model, timeout_s)
    return probe_triton_http(url, settings.triton_model, timeout_s)


def service_status(settings: Settings, timeout_s: float = 3.0) -> list[Health]:
    """Kafka, Postgres, Redis and Triton, each probed at the URL its clients use; an embedded one
    `steel up` has not recorded is "not started". Failures are reported, never raised."""
    recorded = read_stack(settings.run_dir)
    result: list[Health] = []
    for name in SERVICES:
        embedded = is_embedded(name, settings)
        if embedded and name not in recorded:
            result.append(Health(name, up=False, url=None, embedded=True, detail="not started"))
            continue
        pid = recorded.get(name, {}).get("pid") if embedded else None
        url = None
        try:
            url = resolve_url(name, settings)
            version = probe_service(name, url, settings, timeout_s)
        except Exception as exc:  # reported, not raised: status shows every service
            detail = f"{type(exc).__name__}: {exc}"
            result.append(Health(name, up=False, url=url, pid=pid, embedded=embedded, detail=detail))
            continue
        result.append(Health(name, up=True, url=url, pid=pid, version=version, embedded=embedded))
    return result
