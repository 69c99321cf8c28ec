"""`steel demo --scene lifecycle`: the model's life on the line, scripted on the embedded stack.

    steel demo --scene lifecycle                          # retrains a candidate (1 epoch)
    steel demo --scene lifecycle --candidate synthetic    # a shipped bundle as the candidate

The usual demo (stack/demo.py) runs while the scene plays issue 16's loop, step by step in
``_script``: a drift alarm, operator verdicts from the ground truth, a candidate, a shadow run,
evidence for the promotion gate, a promotion (forced past the gate unless --no-force) and, after a
forced one, a rollback. Each step is printed and followed by a dashboard screenshot
(docs/lifecycle/README.md shows one run). The demo then stops as usual: exit 0 only when every
frame produced was stored and each step ran.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stack.demo import Demo
from stack.demo_scene_args import DRIFT_CAMERA
from stack.demo_scene_reads import OPERATOR, SceneReads
from stack.demo_screenshots import Screenshots
from steelcore.errors import SteelError
from steelcore.settings import Settings

SUMMARY_EVERY_S = 10.0
SETTLED_FRAMES = 20


class SceneFailed(SteelError, RuntimeError):
    """A step did not happen: the scene stops and the demo reports why."""


class SceneInterrupted(SteelError, RuntimeError):
    pass


class LifecycleScene(SceneReads, Demo):
    """The demo with the lifecycle script as its main loop."""

    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        # The workers (children) read their drift window from the environment.
        os.environ["STEEL_DRIFT_WINDOW_FRAMES"] = str(args.drift_window)
        super().__init__(settings, args)
        self.steps: list[dict[str, Any]] = []
        self.verdicts = {"confirmed": 0, "false": 0}
        self.reviewed_frames: set[str] = set()
        self._truth_cache: dict[str, list[str]] = {}
        self._scene_truth: Any = None
        self._shots: Any = None
        self._last_summary = 0.0
        self._step_started = time.monotonic()

    def _camera_args(self, k: int) -> list[str]:
        if k + 1 == DRIFT_CAMERA:
            return ["--gain", f"{self.args.drift_gain:g}", "--change-after", str(self.args.drift_after)]
        return []

    # --- the script -----------------------------------------------------------------------------
    def _loop(self) -> None:
        from stack.demo_truth import TruthReader

        a = self.args
        # A truth reader of the scene's own: the live summary's reader hands each truth out once.
        self._scene_truth = TruthReader(self.settings, a.line, int(self.started.timestamp() * 1000))
        self._scene_truth.start()
        if not a.no_screenshots:
            self._shots = Screenshots(
                f"http://{self.settings.dashboard_address}:{self.settings.dashboard_port}", a.screenshots
            )
        try:
            self._script()
        except SceneInterrupted:
            self._say("steel demo: scene interrupted")
            self.failure = self.failure or "interrupted"
        except SceneFailed as exc:
            self.failure = f"scene: {exc}"
            self._say(f"steel demo: {self.failure}")
        finally:
            self._scene_truth.stop()
            if self._shots is not None:
                self._shots.close()

    def _script(self) -> None:
        a = self.args
        drifting = f"{a.line}/cam{DRIFT_CAMERA}"
        self._step(
            1,
            f"drift: {drifting} dims to {a.drift_gain:.0%} from its frame {a.drift_after} on; "
            "waiting for the workers' inspection alarm",
        )
        message = self._wait(lambda: self._inspection_alarm(drifting), "the inspection alarm")
        self._done(f"inspection alarm raised: {message}")
        self._shoot("01-drift-alarm-live", "live", "Inspection alarm")
        self._shoot("02-drift-health", "health", "Models")

        self._step(2, f"operator verdicts from the ground truth on {a.review_frames} frames with defects")
        self._wait(lambda: self._review() >= a.review_frames, "frames with defects to review")
        self._done(
            f"{len(self.reviewed_frames)} frames reviewed: {self.verdicts['confirmed']} defects confirmed, "
            f"{self.verdicts['false']} false alarms"
        )

        production_bundle = self._production_bundle()
        if a.candidate == "retrain":
            name = f"lifecycle-{datetime.now(UTC):%Y%m%d-%H%M%S}"
            self._step(
                3, f"candidate: steel retrain --from-db --model {production_bundle} --epochs 1 -> {name}"
            )
            out = Path(self.settings.models_dir) / name
            self._run_cli(
                "retrain",
                [
                    *("retrain", "--from-db", "--model", production_bundle, "--out", str(out)),
                    "--epochs",
                    "1",
                    "--no-progress",
                ],
            )
            self._done(f"candidate {name}: {self._retrain_note(out)}")
        else:
            name = a.candidate
            self._step(3, f"candidate: the shipped bundle {name} (no retraining)")
            self._done(f"candidate {name}")

        self._step(4, f"shadow run: steel models shadow {name} --share {a.shadow_share:g}")
        self._run_cli(
            "models-shadow", ["models", "shadow", name, "--share", f"{a.shadow_share:g}", "--by", OPERATOR]
        )
        roles = self._roles()
        if roles.shadow is None:
            raise SceneFailed("steel models shadow succeeded but no shadow role is set")
        shadow, production = roles.shadow, roles.production
        self._wait(lambda: self._shadowed(shadow) > 0, f"version {shadow}'s first shadow results")
        self._done(f"v{shadow} ({name}) shadows production v{production} on {a.shadow_share:.0%} of frames")
        self._shoot("03-shadow-health", "health", "Shadow agreement")

        need = self.settings.promote_gate_min_verdicts
        self._step(5, f"evidence: verdicts on shadowed frames until the gate has {need}")
        self._wait(lambda: self._review_evidence(shadow, production) >= need, "verdicts on shadowed frames")
        comparison = self._evidence(shadow, production)
        self._done(
            f"{comparison.pairs} verdicts on shadowed frames: F1 production v{production} "
            f"{_f(comparison.production.f1)}, candidate v{shadow} {_f(comparison.shadow.f1)}"
        )
        self._shoot("04-evidence-health", "health", "Against operator verdicts")

        self._step(6, f"promotion: steel models promote --by {OPERATOR}")
        code, log = self._run_cli("models-promote", ["models", "promote", "--by", OPERATOR], check=False)
        forced = False
        if code == 1:
            self._say(f"    the gate refused: {_last_line(log)}")
            if a.no_force:
                raise SceneFailed("promotion refused by the gate (--no-force)")
            self._say(f"    promoting anyway for the demo: steel models promote --force --by {OPERATOR}")
            self._run_cli("models-promote-forced", ["models", "promote", "--force", "--by", OPERATOR])
            forced = True
        elif code != 0:
            raise SceneFailed(f"steel models promote exited {code}: {_last_line(log)}")
        roles = self._roles()
        if roles.production != shadow:
            raise SceneFailed(f"production is v{roles.production} after the promotion, not v{shadow}")
        # A few seconds of frames on the new version, so the pictures show it settled.
        self._wait(
            lambda: self._judged_by(shadow) >= SETTLED_FRAMES, f"{SETTLED_FRAMES} frames judged by v{shadow}"
        )
        self._done(f"production is v{shadow} ({name}); frames are judged by it")
        self._shoot("05-promoted-health", "health", "Audit trail")
        self._shoot("06-promoted-live", "live", "Current coil")
        if not forced:
            return

        self._step(7, f"rollback: the forced candidate goes; steel models rollback --by {OPERATOR}")
        self._run_cli("models-rollback", ["models", "rollback", "--by", OPERATOR])
        roles = self._roles()
        if roles.production != production:
            raise SceneFailed(f"production is v{roles.production} after the rollback, not v{production}")
        before = self._judged_by(production)
        self._wait(
            lambda: self._judged_by(production) >= before + SETTLED_FRAMES,
            f"{SETTLED_FRAMES} more frames judged by v{production}",
        )
        self._done(f"production is v{production} again; frames are judged by it")
        self._shoot("07-rolled-back-health", "health", "Audit trail")

    # --- steps ----------------------------------------------------------------------------------
    def _step(self, number: int, text: str) -> None:
        self._step_started = time.monotonic()
        self.steps.append({"step": number, "what": text, "started_s": round(self._elapsed(), 1)})
        self._say(f"\n[scene {number}] {text}")

    def _done(self, text: str) -> None:
        step = self.steps[-1]
        step |= {"result": text, "seconds": round(time.monotonic() - self._step_started, 1)}
        self._say(f"    {text} ({step['seconds']:.0f} s)")

    def _elapsed(self) -> float:
        return (datetime.now(UTC) - self.started).total_seconds()

    def _wait(self, condition: Callable[[], Any], what: str) -> Any:
        """Poll ``condition`` every refresh until it is truthy, while the demo's children live."""
        deadline = time.monotonic() + self.args.step_timeout_s
        while True:
            value = condition()
            if value:
                return value
            if self.stop.is_set():
                raise SceneInterrupted(what)
            dead = [c for c in [*self.workers, *self.others.values()] if not c.running]
            dead += [c for c in self.producers if c.returncode not in (None, 0)]
            if dead:
                raise SceneFailed(
                    "; ".join(f"{c.name} exited with {c.returncode} (log {c.log_path})" for c in dead)
                )
            if time.monotonic() > deadline:
                raise SceneFailed(f"no {what} within {self.args.step_timeout_s:.0f} s")
            self._progress()
            self.stop.wait(self.args.refresh_s)

    def _progress(self) -> None:
        if time.monotonic() - self._last_summary < SUMMARY_EVERY_S:
            return
        self._last_summary = time.monotonic()
        snap = self.summary.refresh()
        dice = "-" if snap.mean_dice is None else f"{snap.mean_dice:.3f}"
        self._say(
            f"    ... {snap.elapsed_s:.0f} s: {snap.stored}/{snap.produced} frames stored, "
            f"{snap.alarms} alarms, live Dice {dice}"
        )

    def _run_cli(self, name: str, argv: list[str], *, check: bool = True) -> tuple[int, str]:
        """Run `steel ARGV` to the end (log in run_dir/logs/NAME.log); its exit code and output."""
        from stack.demo_children import Child

        child = Child(name, argv, self.log_dir)
        child.log_path.unlink(missing_ok=True)
        child.start()
        deadline = time.monotonic() + self.args.step_timeout_s
        while child.running:
            if self.stop.is_set():
                child.stop(15.0)
                raise SceneInterrupted(name)
            if time.monotonic() > deadline:
                child.stop(15.0)
                raise SceneFailed(f"steel {' '.join(argv)} ran past {self.args.step_timeout_s:.0f} s")
            self._progress()
            time.sleep(1.0)
        log = child.log_text()
        # The command's own words; the migration check's log lines say nothing about the step.
        said = [line for line in log.splitlines()[1:] if " INFO alembic." not in line]
        for line in said[-6:]:
            self._say(f"    | {line}")
        if check and child.returncode != 0:
            raise SceneFailed(
                f"steel {' '.join(argv)} exited {child.returncode} (log {child.log_path}): {_last_line(log)}"
            )
        return int(child.returncode or 0), log

    def _shoot(self, name: str, page: str, wait_text: str) -> None:
        if self._shots is None:
            return
        try:
            path = self._shots.take(name, page, wait_text)
        except Exception as exc:  # a missing picture is reported, the scene goes on
            self._say(f"    screenshot {name} failed: {type(exc).__name__}: {exc}")
            self.steps[-1].setdefault("screenshot_errors", []).append(f"{name}: {exc}")
            return
        self.steps[-1].setdefault("screenshots", []).append(str(path))
        self._say(f"    screenshot {path}")

    # --- report ---------------------------------------------------------------------------------
    def _report(self, final: dict[str, Any], code: int) -> int:
        final["scene"] = {"name": "lifecycle", "steps": self.steps, "verdicts": self.verdicts}
        path = Path(self.run_dir) / "lifecycle-scene.json"
        path.write_text(json.dumps(final["scene"], indent=2, default=str) + "\n")
        self._say(f"steel demo: scene steps in {path}")
        return super()._report(final, code)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
