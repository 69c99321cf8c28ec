"""Model versions on the running Triton: shadow runs, promotion and rollback (issue 16).

A registered bundle is version V of the classifier, segmenter, postprocess and steel_cascade models
of the *serving* repository (the copy Triton serves, stack.triton_server; never triton_models/).
``steel_ensemble`` has one version and pins its steps to the production version, so production is
whatever the ensemble is pinned to; a shadow is reached through ``steel_cascade`` at its version.

Every change follows one pattern (:meth:`Lifecycle._apply`): rewrite the config.pbtxt files, ask
Triton to load the python models whose config changed, then the ensemble. If any load fails, the
previous files are written back and reloaded, and the command fails with Triton's reason: Triton
keeps serving a loaded model whose reload fails, so production is never without a model.

Promotion switches in three steps so no frame is lost or judged twice: the candidate is loaded
beside production, the ensemble is re-pinned to it (Triton finishes the old ensemble's in-flight
requests on the version they started with, and every answer carries MODEL_VERSION), the roles are
updated in one transaction, and only then is the old production unloaded.

The registry tables are written by these commands only (steelcore.postgres.model_registry_writes),
as the owner login. One command at a time: each holds a Postgres advisory lock for its whole run.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from steelcore import exit_codes, model_agreement
from steelcore.errors import SteelError
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
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from steelcore.triton.exceptions import TritonUnavailableError
from steelcore.triton.model_names import (
    CASCADE,
    CLASSIFIER,
    ENSEMBLE,
    VERSIONED_MODELS,
)
from steelcore.triton.repository import ModelControl, error_reason, model_control

log = logging.getLogger(__name__)

MANIFEST = "repository.json"
CONFIG = "config.pbtxt"

_POLICY = re.compile(r"version_policy:\s*\{.*\}[ \t]*$", re.MULTILINE)
_SPECIFIC = re.compile(r"specific:\s*\{\s*versions:\s*\[([^\]]*)\]")
_STEP_VERSION = re.compile(r"(model_version:\s*)(-?\d+)")


class LifecycleError(SteelError, RuntimeError):
    """A lifecycle command could not do what it was asked; ``exit_code`` says how."""

    exit_code = exit_codes.FAILURE


class BadCandidate(LifecycleError):
    """Unknown bundle, or one that cannot replace production (input shape, classes)."""

    exit_code = exit_codes.BAD_INPUT


class Refused(LifecycleError):
    """The gate, or the current roles, do not allow it; nothing was changed."""


class LoadFailed(LifecycleError):
    """Triton did not load the new configuration; the previous one serves again."""


class TritonUnreachable(LifecycleError):
    exit_code = exit_codes.UNAVAILABLE


# --- config.pbtxt rewriting (pure) ----------------------------------------------------------------
def version_policy_line(versions: Iterable[int]) -> str:
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def set_versions(config_text: str, versions: Iterable[int]) -> str:
    """``config_text`` serving exactly ``versions`` (its version_policy replaced or added)."""
    versions = sorted(set(versions))
    if not versions or min(versions) < 1:
        raise ValueError(f"versions must be integers >= 1, got {versions}")
    line = version_policy_line(versions)
    if _POLICY.search(config_text):
        return _POLICY.sub(line, config_text, count=1)
    # No policy yet (Triton's default serves the newest only): add it after max_batch_size.
    head, sep, rest = config_text.partition("\n")
    anchor = re.search(r"^max_batch_size:.*$", config_text, re.MULTILINE)
    if anchor is None:
        return f"{head}{sep}{line}\n{rest}"
    return config_text[: anchor.end()] + "\n" + line + config_text[anchor.end() :]


def served_versions(config_text: str) -> list[int]:
    """The versions a config's ``specific`` policy lists; [] for any other policy."""
    match = _SPECIFIC.search(config_text)
    if match is None:
        return []
    return sorted(int(v) for v in re.findall(r"\d+", match.group(1)))


def pin_ensemble(config_text: str, version: int) -> str:
    """The ensemble config with every step pinned to ``version``."""
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    text, count = _STEP_VERSION.subn(lambda m: f"{m.group(1)}{version}", config_text)
    if count == 0:
        raise ValueError("ensemble config has no step with a model_version")
    return text


def pinned_version(config_text: str) -> int | None:
    """The version the ensemble's steps are pinned to; None when they disagree or float (-1)."""
    found = {int(v) for _, v in _STEP_VERSION.findall(config_text)}
    return found.pop() if len(found) == 1 and min(found) >= 1 else None


# --- bundles ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleSignature:
    """What a candidate must share with production to replace it in the same Triton models."""

    name: str
    input_shape: str  # "HxW"
    class_ids: tuple[int, ...]
    has_classifier: bool


def bundle_signature(name: str, settings: Settings | None = None) -> BundleSignature:
    """Read ``models_dir/name/model.json`` (no weights). The input shape is model.json's optional
    ``input_shape`` [H, W]; without it the bundle takes the Severstal frame every export serves."""
    settings = settings or get_settings()
    if not name or "/" in name or name.startswith("."):
        raise BadCandidate(f"{name!r} is not a bundle name (a folder under {settings.models_dir})")
    path = Path(settings.models_dir) / name
    meta_path = path / "model.json"
    if not meta_path.is_file():
        available = sorted(p.name for p in Path(settings.models_dir).glob("*/model.json") for p in [p.parent])
        raise BadCandidate(
            f"no model bundle {name!r} in {settings.models_dir} (bundles: {', '.join(available) or 'none'})"
        )
    try:
        meta = json.loads(meta_path.read_text())
        shape = meta.get("input_shape") or [FRAME_HEIGHT, FRAME_WIDTH]
        height, width = (int(v) for v in shape)
        class_ids = tuple(int(c) for c in meta["class_ids"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BadCandidate(f"bundle {name!r}: unreadable {meta_path}: {exc}") from exc
    return BundleSignature(name, f"{height}x{width}", class_ids, meta.get("classifier") is not None)


def check_compatible(candidate: BundleSignature, production: BundleSignature) -> None:
    """Refuse (BadCandidate) a candidate the production models' configs cannot serve."""
    if candidate.input_shape != production.input_shape:
        raise BadCandidate(
            f"bundle {candidate.name!r} takes {candidate.input_shape} frames, production "
            f"({production.name}) takes {production.input_shape}: it cannot serve the same line"
        )
    if candidate.class_ids != production.class_ids:
        raise BadCandidate(
            f"bundle {candidate.name!r} has classes {list(candidate.class_ids)}, production "
            f"({production.name}) {list(production.class_ids)}"
        )
    if candidate.has_classifier != production.has_classifier:
        have = "has" if candidate.has_classifier else "has no"
        raise BadCandidate(
            f"bundle {candidate.name!r} {have} classifier gate, unlike production ({production.name}): "
            "the served models' configs differ"
        )


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
    from stack.triton_server import default_serving_repository

    settings = settings or get_settings()
    if settings.triton_serving_repository is not None:
        return Path(settings.triton_serving_repository)
    return default_serving_repository(Path(settings.run_dir).resolve())


def _export_bundle(name: str, out: Path, fmt: str, kind: str, settings: Settings) -> None:
    """Write bundle ``name``'s repository (version 1) to ``out``: the files its version V gets."""
    from training.triton_export import write_repository

    write_repository(Path(settings.models_dir) / name, out, fmt=fmt, kind=kind)  # type: ignore[arg-type]


@dataclass
class Lifecycle:
    """The lifecycle commands against one database, serving repository and Triton server."""

    engine: Engine
    repository: Path
    triton: ModelControl
    settings: Settings
    say: Callable[[str], None] = print

    # --- repository -------------------------------------------------------------------------------
    def _models(self) -> list[str]:
        return [m for m in VERSIONED_MODELS if (self.repository / m / CONFIG).is_file()]

    def _read_configs(self) -> dict[str, str]:
        return {m: (self.repository / m / CONFIG).read_text() for m in [*self._models(), ENSEMBLE]}

    def _write_configs(self, texts: dict[str, str]) -> None:
        for model, text in texts.items():
            path = self.repository / model / CONFIG
            # Whole file at once: Triton may read a config while a reload elsewhere is running.
            tmp = path.with_suffix(".pbtxt.tmp")
            tmp.write_text(text)
            tmp.replace(path)

    def serving_state(self) -> tuple[list[int], int | None]:
        """(versions the python models serve, version the ensemble is pinned to), from the files."""
        configs = self._read_configs()
        loaded = served_versions(configs[CASCADE]) if CASCADE in configs else []
        return loaded, pinned_version(configs[ENSEMBLE])

    def _has_version(self, version: int) -> bool:
        return all((self.repository / m / str(version)).is_dir() for m in self._models())

    def _install(self, name: str, version: int) -> None:
        """Copy bundle ``name``'s export into the ``version`` folders of the serving repository."""
        manifest = json.loads((self.repository / MANIFEST).read_text())
        fmt, kind = manifest.get("format", "openvino"), manifest.get("kind", "cpu")
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=self.repository.parent))
        try:
            self.say(f"exporting bundle {name} ({fmt}) as version {version} ...")
            try:
                _export_bundle(name, staging, fmt, kind, self.settings)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
                # Weights or configs that do not load: the bundle, not the line, is at fault.
                raise BadCandidate(f"bundle {name!r} cannot be exported: {exc}") from exc
            for model in self._models():
                source = staging / model / "1"
                if not source.is_dir():
                    raise BadCandidate(f"bundle {name!r} has no {model} to serve")
                target = self.repository / model / str(version)
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        except BaseException:
            self._uninstall(version)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _uninstall(self, version: int) -> None:
        for model in VERSIONED_MODELS:
            shutil.rmtree(self.repository / model / str(version), ignore_errors=True)

    def _apply(self, loaded: Iterable[int], production: int) -> None:
        """Serve ``loaded`` with the ensemble pinned to ``production``; all or nothing."""
        loaded = sorted(set(loaded) | {production})
        before = self._read_configs()
        after = {
            model: pin_ensemble(text, production) if model == ENSEMBLE else set_versions(text, loaded)
            for model, text in before.items()
        }
        changed = [m for m in after if after[m] != before[m]]
        if not changed:
            return
        # The python models first: the ensemble's new pin must find its version loaded.
        order = [m for m in changed if m != ENSEMBLE] + ([ENSEMBLE] if ENSEMBLE in changed else [])
        self._write_configs({m: after[m] for m in changed})
        done: list[str] = []
        try:
            for model in order:
                self.triton.load_model(model)
                done.append(model)
        except Exception as exc:
            reason = error_reason(exc)
            log.warning("loading %s failed (%s): restoring the previous configuration", model, reason)
            self._write_configs({m: before[m] for m in changed})
            for restored in [m for m in order if m in done or m == model]:
                try:
                    self.triton.load_model(restored)
                except Exception as again:  # keep going: the others must be restored too
                    log.error("restoring %s failed: %s", restored, error_reason(again))
            if isinstance(exc, ConnectionError | OSError):
                raise TritonUnreachable(f"Triton: {reason}") from exc
            raise LoadFailed(f"Triton did not load {model}: {reason}") from exc

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
