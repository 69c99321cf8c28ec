"""Model versions on the running Triton: shadow runs, promotion and rollback (issue 16).

A registered bundle is version V of the classifier, segmenter, postprocess and steel_cascade models
of the *serving* repository (the copy Triton serves, stack.serving_repository; never triton_models/).
``steel_ensemble`` has one version and pins its steps to the production version, so production is
whatever the ensemble is pinned to; a shadow is reached through ``steel_cascade`` at its version.

Every change follows one pattern (``_apply``, stack.lifecycle_repository): rewrite the config.pbtxt files, ask
Triton to load the python models whose config changed, then the ensemble. If any load fails, the
previous files are written back and reloaded, and the command fails with Triton's reason: Triton
keeps serving a loaded model whose reload fails, so production is never without a model.

Promotion switches in three steps so no frame is lost or judged twice: the candidate is loaded
beside production, the ensemble is re-pinned to it (Triton finishes the old ensemble's in-flight
requests on the version they started with, and every answer carries MODEL_VERSION), the roles are
updated in one transaction, and only then is the old production unloaded.

The registry tables are written by these commands only (steelcore.postgres.model_registry_writes),
as the owner login. One command at a time: each holds a Postgres advisory lock for its whole run.

The parts: stack.version_configs (the config text), stack.bundle_signature (what a candidate must
share with production), stack.lifecycle_repository (files and loads), stack.lifecycle_errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from stack.bundle_signature import BundleSignature, bundle_signature, check_compatible
from stack.lifecycle_errors import BadCandidate, LifecycleError, Refused, TritonUnreachable
from stack.lifecycle_repository import CONFIG, LifecycleRepository
from steelcore import model_agreement
from steelcore.postgres import model_evidence
from steelcore.postgres.model_registry import Roles, read_roles, version_bundles
from steelcore.postgres.model_registry_writes import (
    clear_shadow_role,
    lifecycle_lock,
    newest_registered_version,
    record_audit,
    register_version,
    registered_version,
    set_role,
    version_replaced_by,
)
from steelcore.settings import Settings, get_settings
from steelcore.triton.exceptions import TritonUnavailableError
from steelcore.triton.model_names import CLASSIFIER, MANIFEST, VERSIONED_MODELS
from steelcore.triton.repository import ModelControl, model_control

log = logging.getLogger(__name__)


# --- Triton model control ---------------------------------------------------------------------------
def triton_control(url: str, protocol: str = "http") -> ModelControl:
    """Triton's model control API at ``url``; TritonUnreachable (exit UNAVAILABLE) when not live."""
    try:
        return model_control(url, protocol)
    except TritonUnavailableError as exc:
        raise TritonUnreachable(str(exc)) from exc


# --- the serving repository -------------------------------------------------------------------------
def serving_repository_path(settings: Settings | None = None) -> Path:
    """STEEL_TRITON_SERVING_REPOSITORY, else the embedded server's copy under run_dir."""
    from stack.serving_repository import default_serving_repository

    settings = settings or get_settings()
    if settings.triton_serving_repository is not None:
        return Path(settings.triton_serving_repository)
    return default_serving_repository(Path(settings.run_dir).resolve())


@dataclass
class Lifecycle(LifecycleRepository):
    """The lifecycle commands against one database, serving repository and Triton server."""

    engine: Engine
    repository: Path
    triton: ModelControl
    settings: Settings
    say: Callable[[str], None] = print

    # --- registry ---------------------------------------------------------------------------------
    def _signature_of(self, conn: Connection, version: int) -> BundleSignature:
        row = registered_version(conn, version)
        return BundleSignature(
            row.bundle,
            row.input_shape,
            tuple(int(c) for c in row.class_ids),
            (self.repository / CLASSIFIER / CONFIG).is_file(),
        )

    def _register(self, conn: Connection, version: int, sig: BundleSignature, actor: str) -> None:
        register_version(
            conn, version, bundle=sig.name, input_shape=sig.input_shape, class_ids=sig.class_ids, actor=actor
        )
        record_audit(conn, "register", version, actor)

    def bootstrap(self, conn: Connection, actor: str) -> Roles:
        """With no production row, register what the repository serves as version 1 = production.

        Not committed here: it becomes permanent with the command's own change, so a refused
        command leaves the registry as it found it."""
        roles = read_roles(conn)
        if roles.production is not None:
            return roles
        manifest = json.loads((self.repository / MANIFEST).read_text())
        loaded, pinned = self.serving_state()
        version = pinned or 1
        sig = bundle_signature(str(manifest["bundle"]), self.settings)
        sig = BundleSignature(
            sig.name,
            sig.input_shape,
            tuple(int(c) for c in manifest.get("class_ids", sig.class_ids)),
            sig.has_classifier,
        )
        if version not in version_bundles(conn):
            self._register(conn, version, sig, actor)
        set_role(conn, "production", version, actor, None)
        self.say(f"registered version {version} = bundle {sig.name} as production (serving {loaded})")
        return read_roles(conn)

    def _next_version(self, conn: Connection) -> int:
        on_disk = [
            int(p.name) for m in VERSIONED_MODELS for p in (self.repository / m).glob("*") if p.name.isdigit()
        ]
        registered = newest_registered_version(conn)
        return max([registered, *on_disk]) + 1

    def _version_for(self, conn: Connection, name: str, actor: str) -> tuple[int, bool]:
        """The version of bundle ``name`` to load: a registered one whose files are still in the
        repository, else a new one installed now. Returns (version, newly installed)."""
        for version, bundle in sorted(version_bundles(conn).items(), reverse=True):
            if bundle == name and self._has_version(version):
                return version, False
        version = self._next_version(conn)
        self._install(name, version)
        return version, True

    # --- commands ---------------------------------------------------------------------------------
    def shadow(self, name: str, share: float, actor: str) -> int:
        """Serve bundle ``name`` beside production and send it ``share`` of the live frames."""
        if not 0 < share <= 1:
            raise BadCandidate(f"--share must be in (0, 1], got {share}")
        with lifecycle_lock(self.engine) as conn:
            roles = self.bootstrap(conn, actor)
            assert roles.production is not None
            candidate = bundle_signature(name, self.settings)
            check_compatible(candidate, self._signature_of(conn, roles.production))
            bundles = version_bundles(conn)
            if bundles.get(roles.production) == name:
                raise Refused(f"bundle {name!r} already serves production (version {roles.production})")
            if roles.shadow is not None:
                raise Refused(
                    f"version {roles.shadow} ({bundles.get(roles.shadow)}) already shadows production: "
                    "`steel models stop-shadow` first"
                )
            version, fresh = self._version_for(conn, name, actor)
            try:
                self._apply([roles.production, version], roles.production)
            except LifecycleError:
                if fresh:
                    self._uninstall(version)
                raise
            if version not in bundles:
                self._register(conn, version, candidate, actor)
            set_role(conn, "shadow", version, actor, share)
            record_audit(conn, "shadow", version, actor, previous=roles.production, figures={"share": share})
            conn.commit()
        self.say(
            f"version {version} ({name}) shadows production version {roles.production} "
            f"on {share:.0%} of frames"
        )
        return version

    def stop_shadow(self, actor: str) -> int | None:
        """End the shadow run; returns the version that shadowed, None when none did."""
        with lifecycle_lock(self.engine) as conn:
            roles = self.bootstrap(conn, actor)
            assert roles.production is not None
            if roles.shadow is None:
                self.say("no shadow run to stop")
                return None
            # Roles first: workers stop sending frames before the version goes away.
            clear_shadow_role(conn)
            record_audit(conn, "stop_shadow", roles.shadow, actor, previous=roles.production)
            conn.commit()
            self._unload_quietly([roles.production], roles.production)
        self.say(f"shadow version {roles.shadow} stopped; production version {roles.production} serves alone")
        return roles.shadow

    def promote(self, name: str | None, *, force: bool, actor: str) -> int:
        """Make ``name`` (default: the shadow) production, if it passes the gate or ``force``."""
        with lifecycle_lock(self.engine) as conn:
            roles = self.bootstrap(conn, actor)
            production = roles.production
            assert production is not None
            bundles = version_bundles(conn)
            if name is None:
                if roles.shadow is None:
                    raise BadCandidate(
                        "no shadow run to promote: name a bundle, or start `steel models shadow NAME`"
                    )
                name = bundles[roles.shadow]
            candidate = bundle_signature(name, self.settings)
            check_compatible(candidate, self._signature_of(conn, production))
            if bundles.get(production) == name:
                raise Refused(f"bundle {name!r} already serves production (version {production})")
            shadow = roles.shadow if roles.shadow is not None and bundles.get(roles.shadow) == name else None

            if shadow is not None:
                evidence = model_evidence.read_evidence(conn, shadow, production_version=production)
            else:  # never shadowed: no frames to judge it by
                evidence = model_agreement.Evidence()
            comparison = model_agreement.compare_verdicts(evidence.frames, evidence.verdicts)
            agreement = model_agreement.mask_agreement(evidence.frames, candidate.class_ids)
            decision = model_agreement.promote_gate(comparison, self.settings.promote_gate_min_verdicts)
            if not decision.passed and not force:
                raise Refused(f"promotion of {name} refused: {decision.reason} (--force overrides)")

            if shadow is not None:
                version, fresh = shadow, False
            else:
                version, fresh = self._version_for(conn, name, actor)
            keep = {production, version}
            loaded_before = self.serving_state()[0]
            try:
                self._apply(keep, production)  # the candidate loaded beside production
                self._apply(keep, version)  # the ensemble switched
            except LifecycleError:
                # The switch restored itself; the candidate may still be loaded beside production.
                self._unload_quietly(loaded_before or [production], production)
                if fresh:
                    self._uninstall(version)
                raise
            figures = model_agreement.audit_figures(
                agreement, comparison, production_version=production, shadow_version=shadow
            )
            figures["gate"] = {"passed": decision.passed, "reason": decision.reason}
            if version not in bundles:
                self._register(conn, version, candidate, actor)
            set_role(conn, "production", version, actor, None)
            clear_shadow_role(conn)
            record_audit(
                conn,
                "promote",
                version,
                actor,
                previous=production,
                forced=not decision.passed,
                figures=figures,
            )
            conn.commit()
            self._unload_quietly([version], version)
        note = " (gate overridden with --force)" if not decision.passed else ""
        self.say(
            f"version {version} ({name}) is production, was version {production}{note}: {decision.reason}"
        )
        return version

    def rollback(self, actor: str) -> int:
        """Production back to the version it replaced (from the audit trail)."""
        with lifecycle_lock(self.engine) as conn:
            roles = self.bootstrap(conn, actor)
            production = roles.production
            assert production is not None
            previous = version_replaced_by(conn, production)
            if previous is None:
                raise Refused(
                    f"production version {production} replaced no earlier version: nothing to roll back to"
                )
            if not self._has_version(previous):
                raise Refused(f"version {previous} is no longer in {self.repository}: cannot roll back to it")
            shadow = roles.shadow if roles.shadow not in (None, previous) else None
            keep = {production, previous} | ({shadow} if shadow else set())
            loaded_before = self.serving_state()[0]
            try:
                self._apply(keep, production)
                self._apply(keep, previous)
            except LifecycleError:
                self._unload_quietly(loaded_before or [production], production)
                raise
            set_role(conn, "production", previous, actor, None)
            if roles.shadow is not None and shadow is None:
                clear_shadow_role(conn)
            record_audit(conn, "rollback", previous, actor, previous=production)
            conn.commit()
            self._unload_quietly([previous] + ([shadow] if shadow else []), previous)
        bundle = version_bundles(self.engine).get(previous)
        self.say(f"rolled back: version {previous} ({bundle}) is production again, was version {production}")
        return previous

    def _unload_quietly(self, loaded: list[int], production: int) -> None:
        """Drop the versions not in ``loaded``. Production is already right, so a failure here
        leaves an idle version loaded: worth a warning, not a failed command."""
        try:
            self._apply(loaded, production)
        except LifecycleError as exc:
            log.warning("the unused versions stay loaded: %s", exc)
            self.say(f"warning: unused versions stay loaded ({exc})")
