"""The embedded stack as one thing: start what settings do not point elsewhere, record it, stop it.

A service whose URL is set in settings (STEEL_KAFKA_URL, ...) is external: it is health-checked,
never started or stopped. The others run from pip wheels under ``settings.run_dir`` and are
recorded in ``run_dir/stack.json`` (see steelcore.service_urls) so every process finds them.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack.kafka_broker import KafkaBroker
from stack.postgres_server import PostgresServer
from stack.redis_server import RedisServer
from stack.service import EmbeddedService
from stack.service_errors import ServiceStartError
from stack.triton_service import TritonService, triton_launcher_available
from steelcore.service_health import Health, probe_service
from steelcore.service_urls import (
    SERVICES,
    Service,
    ServiceUnavailableError,
    read_stack,
    stack_file,
    write_stack,
)
from steelcore.settings import Settings, reveal

log = logging.getLogger(__name__)


def service_record(svc: EmbeddedService) -> dict[str, Any]:
    """The stack.json entry of a running embedded service."""
    proc = svc.process()
    record: dict[str, Any] = {
        "url": svc.url,
        "port": svc.port,
        "pid": proc.pid if proc is not None else None,
        "log": str(svc.log_path),
        "started_at": proc.create_time() if proc is not None else None,
    }
    if isinstance(svc, RedisServer):
        record["dashboard_url"] = svc.dashboard_url  # the dashboard's ACL user
    if isinstance(svc, TritonService):
        record.update(
            grpc_url=svc.grpc_url,
            http_url=svc.http_url,
            metrics_url=svc.metrics_url,
            grpc_port=svc.grpc_port,
            http_port=svc.http_port,
            metrics_port=svc.metrics_port,
        )
    return record


# ---- the stack ------------------------------------------------------------------------------
@dataclass
class UpReport:
    health: list[Health] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, ServiceStartError] = field(default_factory=dict)
    start_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and all(h.up for h in self.health)


@dataclass(frozen=True)
class DownReport:
    stopped: list[str]
    stale_pidfiles: list[str]


class EmbeddedStack:
    """Kafka (Tansu), Postgres, Redis and Triton for one run directory."""

    def __init__(self, settings: Settings, *, include_triton: bool = True) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir).resolve()
        self.include_triton = include_triton

    # ---- which services ---------------------------------------------------------------
    def external_url(self, name: Service) -> str | None:
        value = reveal(getattr(self.settings, f"{name}_url"))  # the Postgres and Redis URLs are secrets
        return value.strip() if isinstance(value, str) and value.strip() else None

    def wanted(self) -> list[Service]:
        """Services this stack is responsible for, in start order."""
        return [name for name in SERVICES if name != "triton" or self.include_triton]

    def service(self, name: Service, record: dict[str, Any] | None = None) -> EmbeddedService:
        """The embedded service ``name``; ports come from its stack.json record when there is one."""
        rec = record or {}
        s = self.settings
        if name == "kafka":
            return KafkaBroker(self.run_dir, int(rec.get("port", s.kafka_port)))
        if name == "postgres":
            return PostgresServer(self.run_dir, int(rec.get("port", s.postgres_port)))
        if name == "redis":
            return RedisServer(
                self.run_dir,
                int(rec.get("port", s.redis_port)),
                alarm_stream=s.alarm_stream,
                inspection_stream=s.inspection_alarm_stream,
            )
        return TritonService(
            self.run_dir,
            s.triton_repository,
            s.triton_model,
            http_port=int(rec.get("http_port", s.triton_http_port)),
            grpc_port=int(rec.get("grpc_port", s.triton_grpc_port)),
            metrics_port=int(rec.get("metrics_port", s.triton_metrics_port)),
            protocol=s.triton_protocol,
            serving_repository=s.triton_serving_repository,
        )

    # ---- up -----------------------------------------------------------------------------
    def up(self, timeout_s: float = 60.0) -> UpReport:
        """Start every embedded service (in parallel), health-check the external ones, record them.

        On any failure the services this call started are stopped again, so a failed `up` leaves
        only what was running before it.
        """
        began = time.monotonic()
        report = UpReport()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        recorded = read_stack(self.run_dir)
        to_start: dict[Service, EmbeddedService] = {}
        for name in self.wanted():
            if self.external_url(name):
                continue
            if name == "triton" and not triton_launcher_available():
                report.skipped[name] = "stack/triton_server.py is not installed; Triton not started"
                continue
            svc = self.service(name, recorded.get(name))
            # A recorded port binds only a running service; a fresh start follows current settings.
            to_start[name] = svc if svc.process() is not None else self.service(name)

        with ThreadPoolExecutor(max_workers=max(1, len(to_start))) as pool:
            futures = {name: pool.submit(self._start_one, svc, timeout_s) for name, svc in to_start.items()}
            for name, future in futures.items():
                try:
                    seconds, adopted = future.result()
                except ServiceStartError as exc:
                    report.failures[name] = exc
                    continue
                except Exception as exc:  # a bug or a broken wheel: still roll back the others
                    log.exception("%s: unexpected error while starting", name)
                    svc = to_start[name]
                    report.failures[name] = ServiceStartError(
                        name, f"{type(exc).__name__}: {exc}", svc.log_path
                    )
                    continue
                report.start_seconds[name] = seconds
                (report.adopted if adopted else report.started).append(name)

        for name, svc in to_start.items():
            if name not in report.failures:
                recorded[name] = service_record(svc)
        report.health = [self._external_health(name) for name in self.wanted() if self.external_url(name)]
        report.health += [to_start[name].health() for name in to_start if name not in report.failures]
        report.health += [
            Health(name, up=False, url=to_start[name].url, detail="failed to start (see below)")
            for name in report.failures
        ]
        if report.ok:
            write_stack(self.run_dir, recorded)
        else:
            for name in reversed(report.started):
                to_start[name].stop()
                recorded.pop(name, None)
            report.health = [
                Health(h.name, up=False, url=h.url, detail="stopped again: the stack did not come up")
                if h.name in report.started
                else h
                for h in report.health
            ]
            if recorded:
                write_stack(self.run_dir, recorded)
            else:
                stack_file(self.run_dir).unlink(missing_ok=True)
        report.total_seconds = time.monotonic() - began
        return report

    @staticmethod
    def _start_one(svc: EmbeddedService, timeout_s: float) -> tuple[float, bool]:
        adopted = svc.process() is not None
        began = time.monotonic()
        svc.start(timeout_s)
        return time.monotonic() - began, adopted

    # ---- down ---------------------------------------------------------------------------
    def down(self) -> DownReport:
        """Stop every embedded service under run_dir, in reverse start order; remove stale pidfiles."""
        try:
            recorded = read_stack(self.run_dir)
        except ServiceUnavailableError as exc:
            # Pidfiles, not stack.json, say what runs; a damaged record must not block stopping.
            log.warning("%s; stopping from pidfiles alone", exc)
            recorded = {}
        stopped: list[str] = []
        stale: list[str] = []
        for name in reversed(SERVICES):
            svc = self.service(name, recorded.get(name))
            if svc.remove_stale_pidfile():
                stale.append(name)
            if svc.stop():
                stopped.append(name)
        stack_file(self.run_dir).unlink(missing_ok=True)
        return DownReport(stopped=stopped, stale_pidfiles=stale)

    # ---- status -------------------------------------------------------------------------
    def status(self) -> list[Health]:
        """Health of all four services: external ones probed, embedded ones via pidfile and probe."""
        recorded = read_stack(self.run_dir)
        result: list[Health] = []
        for name in SERVICES:
            if self.external_url(name):
                result.append(self._external_health(name))
                continue
            svc = self.service(name, recorded.get(name))
            health = svc.health()
            if name not in recorded and not health.up:
                health = Health(name, up=False, url=None, embedded=True, detail="not started")
            result.append(health)
        return result

    def configured(self, health: list[Health]) -> list[Health]:
        """The services that should be up: external ones, recorded ones, and any still running."""
        recorded = read_stack(self.run_dir)
        return [h for h in health if not h.embedded or h.name in recorded or h.pid is not None]

    def _external_health(self, name: Service) -> Health:
        url = self.external_url(name)
        assert url is not None
        try:
            version = self._probe_external(name, url)
        except Exception as exc:  # reported, not raised: status shows every service
            return Health(name, up=False, url=url, embedded=False, detail=f"{type(exc).__name__}: {exc}")
        return Health(name, up=True, url=url, version=version, embedded=False)

    def _probe_external(self, name: Service, url: str, timeout_s: float = 3.0) -> str | None:
        return probe_service(name, url, self.settings, timeout_s)
