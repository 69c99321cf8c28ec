"""The serving repository's files under a lifecycle change (mixed into stack.model_lifecycle.Lifecycle,
whose attributes it uses): a bundle installed as version V of each versioned model, and every change
applied all or nothing (configs rewritten, models reloaded, the previous files restored on failure)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stack.lifecycle_errors import BadCandidate, LoadFailed, TritonUnreachable
from stack.version_configs import pin_ensemble, pinned_version, served_versions, set_versions
from steelcore.settings import Settings
from steelcore.triton.model_names import CASCADE, ENSEMBLE, MANIFEST, VERSIONED_MODELS
from steelcore.triton.repository import error_reason

log = logging.getLogger("stack.model_lifecycle")  # the lifecycle's one log, as before the split

CONFIG = "config.pbtxt"


def _export_bundle(name: str, out: Path, fmt: str, kind: str, settings: Settings) -> None:
    """Write bundle ``name``'s repository (version 1) to ``out``: the files its version V gets."""
    from training.triton_export import write_repository

    write_repository(Path(settings.models_dir) / name, out, fmt=fmt, kind=kind)  # type: ignore[arg-type]


def _check_network_files(name: str, model: str, folder: Path) -> None:
    """Refuse (BadCandidate) network files that do not parse, before Triton is asked to load them:
    Triton 2.51 itself crashed (SIGSEGV) in about 1 load of 3 whose python model failed to read a
    corrupt network, taking production serving down with it. Parsed here without OpenVINO, which
    stays out of the CLI's process: ONNX with its checker, OpenVINO IR as XML beside its weights."""
    import xml.etree.ElementTree as ElementTree

    import onnx

    for path in sorted(folder.glob("*.onnx")):
        try:
            onnx.checker.check_model(onnx.load(str(path)))
        except Exception as exc:  # onnx raises DecodeError, ValidationError and others
            raise BadCandidate(
                f"bundle {name!r}: {model}'s {path.name} is not a valid ONNX network: {exc}"
            ) from exc
    for path in sorted(folder.glob("*.xml")):
        try:
            ElementTree.parse(path)
        except ElementTree.ParseError as exc:
            raise BadCandidate(f"bundle {name!r}: {model}'s {path.name} is not OpenVINO IR: {exc}") from exc
        if not path.with_suffix(".bin").is_file():
            raise BadCandidate(
                f"bundle {name!r}: {model}'s {path.name} has no {path.with_suffix('.bin').name}"
            )


class LifecycleRepository:
    """Lifecycle's file and Triton-load operations on ``repository``."""

    repository: Path
    triton: Any
    settings: Settings
    say: Callable[[str], None]

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
                _check_network_files(name, model, source)
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
