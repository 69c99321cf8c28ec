"""The worker's view of the model registry (steelcore.postgres.model_registry): which version serves
production, which one shadows it and on what share, and which bundle each version is.

Read every ``settings.model_roles_poll_s`` from the worker's loop. Advisory like drift: a database
error keeps the last roles (a lifecycle change then reaches this worker a poll later), never an
outage, since production inference does not depend on it. The version that judged a frame comes
from Triton's answer itself (MODEL_VERSION); this view only names its bundle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from steelcore.postgres.model_registry import NO_ROLES, Roles, read_roles, version_bundles
from steelcore.settings import Settings

log = logging.getLogger(__name__)

# A registry that stays unreadable is said again at most this often (the worker polls every few s).
WARN_EVERY_S = 60.0


class RoleWatch:
    """Roles and version bundles, refreshed on a period; ``label`` names the version of an answer."""

    def __init__(
        self,
        read_roles: Callable[[], Roles],
        read_bundles: Callable[[], dict[int, str]],
        poll_s: float,
        fallback_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_roles = read_roles
        self._read_bundles = read_bundles
        self.poll_s = poll_s
        self.fallback_name = fallback_name
        self._clock = clock
        self.roles: Roles = NO_ROLES
        self.bundles: dict[int, str] = {}
        self._next_poll = 0.0
        self._last_warning = -WARN_EVERY_S
        # Versions asked for since the last poll and not registered: one extra read each, not one
        # per batch, while a repository serves versions the registry does not know (bootstrap).
        self._missed: set[int] = set()

    @classmethod
    def from_engine(cls, engine: Engine, settings: Settings) -> RoleWatch:
        return cls(
            lambda: read_roles(engine),
            lambda: version_bundles(engine),
            settings.model_roles_poll_s,
            settings.model_name,
        )

    def poll(self) -> None:
        """Refresh when the period has passed."""
        if self._clock() >= self._next_poll:
            self.refresh()

    def refresh(self) -> bool:
        """Read roles and bundles now; on any error keep the last ones. True when both were read."""
        self._next_poll = self._clock() + self.poll_s
        self._missed.clear()
        try:
            roles, bundles = self._read_roles(), self._read_bundles()
        except Exception as exc:  # the registry is advisory: production goes on with the last roles
            self._warn(exc)
            return False
        if roles != self.roles:
            share = f" on {roles.shadow_share:.0%} of frames" if roles.shadow_share else ""
            log.info("model roles: production %s, shadow %s%s", roles.production, roles.shadow, share)
        self.roles, self.bundles = roles, bundles
        return True

    def shadow(self) -> tuple[int, float] | None:
        """(version, share) of the shadow run, or None when none runs."""
        r = self.roles
        if r.shadow is None or not r.shadow_share or r.shadow == r.production:
            return None
        return r.shadow, r.shadow_share

    def label(self, version: int) -> tuple[str, str]:
        """(model_name, model_version) stored for a frame judged by ``version``: the bundle of that
        version, or ``fallback_name`` while the registry does not know it (no registry yet)."""
        name = self.bundles.get(version)
        if name is None and version not in self._missed:
            # Registered since the last poll (a promotion registers before it loads): read again.
            self._missed.add(version)
            try:
                self.bundles = self._read_bundles()
            except Exception as exc:  # keep the cache; the fallback name is stored meanwhile
                self._warn(exc)
            name = self.bundles.get(version)
        return name or self.fallback_name, str(version)

    def _warn(self, exc: BaseException) -> None:
        now = self._clock()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("model registry not readable (%s); keeping the last roles", exc)
