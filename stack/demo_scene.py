"""`steel demo --scene lifecycle`: the model's life on the line, scripted on the embedded stack.

    steel demo --scene lifecycle                          # retrains a candidate (1 epoch)
    steel demo --scene lifecycle --candidate synthetic    # a shipped bundle as the candidate

The usual demo (stack, two cameras, workers, actuator, dashboard; stack/demo.py) runs while the
scene goes through the loop of issue 16, printing each step and saving a screenshot of the
dashboard after each one (docs/lifecycle/ unless --screenshots says otherwise):

1. drift: camera 2's lamp dims to --drift-gain from its --drift-after-th frame on; the workers raise
   an inspection alarm for it (their drift window is shortened to --drift-window frames);
2. operator verdicts: every stored defect is judged against the synthetic camera's ground truth
   (the truth topic): 'confirmed' when the true mask has that class, else 'false' (feedback table,
   as the dashboard's buttons write it);
3. a candidate: `steel retrain --from-db --epochs 1` on the reviewed frames (or the bundle named
   by --candidate);
4. a shadow run: `steel models shadow CANDIDATE --share S`;
5. evidence: verdicts go on until the promotion gate has promote_gate_min_verdicts verdicts on
   shadowed frames;
6. a promotion: `steel models promote --by demo-operator`; the new version judges the frames. When
   the gate refuses, the scene says why and promotes with --force (audited as forced) unless
   --no-force, and then:
7. a rollback: `steel models rollback --by demo-operator` puts the previous production back.

Then the demo stops as usual (exit 0 only when every frame produced was stored and each step ran).
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
from steelcore.errors import SteelError
from steelcore.paths import REPO_ROOT
from steelcore.settings import Settings

SCENES = ("lifecycle",)
OPERATOR = "demo-operator"
SCREENSHOT_WIDTH = 1400
# Tall enough for every section of a page: the health page's Models section sits below the charts.
SCREENSHOT_HEIGHTS = {"live": 1900, "health": 3300}
PAGE_WAIT_MS = 60_000
SUMMARY_EVERY_S = 10.0
DRIFT_CAMERA = 2  # cameras are cam1..camN; this one dims
SETTLED_FRAMES = 20


class SceneFailed(SteelError, RuntimeError):
    """A step did not happen: the scene stops and the demo reports why."""


class SceneInterrupted(SteelError, RuntimeError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = Settings()
    group = parser.add_argument_group("--scene lifecycle")
    group.add_argument(
        "--scene",
        choices=SCENES,
        default=None,
        help="run a scripted scene: lifecycle = drift alarm, operator verdicts, a candidate, a "
        "shadow run and a promotion, with dashboard screenshots",
    )
    group.add_argument(
        "--candidate",
        default="retrain",
        help="'retrain' (default): `steel retrain --from-db --epochs 1` on the reviewed frames; or a "
        "bundle under models/ (e.g. synthetic) to shadow instead",
    )
    group.add_argument("--drift-after", type=int, default=30, help="camera 2 dims from this frame on (30)")
    group.add_argument("--drift-gain", type=float, default=0.35, help="camera 2's gain after that (0.35)")
    group.add_argument(
        "--drift-window",
        type=int,
        default=10,
        help=f"the workers' drift window, frames (default 10; settings: {s.drift_window_frames})",
    )
    group.add_argument(
        "--review-frames",
        type=int,
        default=40,
        help="frames with defects operators review before the candidate is made (default 40)",
    )
    group.add_argument(
        "--shadow-share",
        type=float,
        default=0.5,
        help=f"share of frames the shadow judges in the scene (default 0.5; settings: {s.shadow_share:g})",
    )
    group.add_argument(
        "--no-force", action="store_true", help="when the gate refuses, stop there instead of forcing"
    )
    group.add_argument(
        "--screenshots",
        type=Path,
        default=REPO_ROOT / "docs" / "lifecycle",
        help="folder for the dashboard screenshots of each step (default docs/lifecycle)",
    )
    group.add_argument("--no-screenshots", action="store_true", help="take no screenshots")
    group.add_argument(
        "--step-timeout-s", type=float, default=900.0, help="longest wait for one step (default 900 s)"
    )


def check_arguments(args: argparse.Namespace) -> None:
    if args.scene is None:
        return
    if args.frames is not None:
        raise ValueError("--scene runs until its last step; leave out --frames")
    if args.cameras < DRIFT_CAMERA:
        raise ValueError(f"--scene lifecycle dims camera {DRIFT_CAMERA}: give --cameras >= {DRIFT_CAMERA}")
    if args.drift_after < 0 or args.drift_window < 1 or args.review_frames < 1:
        raise ValueError("--drift-after must be >= 0, --drift-window and --review-frames >= 1")
    if not 0 < args.drift_gain < 1:
        raise ValueError(f"--drift-gain must be in (0, 1) (a dimmer lamp), got {args.drift_gain}")
    if not 0 < args.shadow_share <= 1:
        raise ValueError(f"--shadow-share must be in (0, 1], got {args.shadow_share}")
    if args.step_timeout_s <= 0:
        raise ValueError("--step-timeout-s must be positive")
    if args.no_dashboard and not args.no_screenshots:
        raise ValueError("screenshots need the dashboard: drop --no-dashboard or add --no-screenshots")


class LifecycleScene(Demo):
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

    # --- what the scene reads and writes --------------------------------------------------------
    def _inspection_alarm(self, camera: str) -> str | None:
        from steelcore.redis.connection import redis_client
        from steelcore.redis.entries import newest_entries

        client = redis_client(self.settings, socket_timeout=5)
        try:
            entries = newest_entries(client, self.settings.inspection_alarm_stream, 50)
        finally:
            client.close()
        for _, fields in entries:
            if fields.get("camera") == camera:
                return fields.get("message", "") if fields.get("state") == "raised" else None
        return None

    def _review(self) -> int:
        """Judge each stored, unjudged defect of this run whose frame's truth is known; the number of
        frames reviewed so far."""
        from steelcore.postgres.verdicts import defects_without_verdict, record_feedback

        engine = self.summary.engine
        rows = defects_without_verdict(engine, self.args.line, self.started)
        missing = [r.frame_id for r in rows if r.frame_id not in self._truth_cache]
        self._truth_cache.update(self._scene_truth.take(missing))
        for r in rows:
            truth = self._truth_cache.get(r.frame_id)
            if truth is None:
                continue  # its truth message is still on the way
            verdict = "confirmed" if truth[r.class_id - 1].strip() else "false"
            record_feedback(engine, verdict=verdict, operator=OPERATOR, defect_id=r.defect_id)
            self.verdicts[verdict] += 1
            self.reviewed_frames.add(r.frame_id)
        return len(self.reviewed_frames)

    def _review_evidence(self, shadow: int, production: int | None) -> int:
        """Review what is new; the verdict pairs on shadowed frames the gate would count."""
        self._review()
        return self._evidence(shadow, production).pairs

    def _roles(self) -> Any:
        from steelcore.postgres.model_registry import read_roles

        return read_roles(self.summary.engine)

    def _production_bundle(self) -> str:
        from steelcore.postgres.model_registry import version_bundles

        roles = self._roles()
        if roles.production is None:
            return self.settings.model_name
        return version_bundles(self.summary.engine).get(roles.production, self.settings.model_name)

    def _shadowed(self, version: int) -> int:
        from steelcore.postgres.model_evidence import shadowed_frame_count

        return shadowed_frame_count(self.summary.engine, version)

    def _evidence(self, shadow: int, production: int | None) -> Any:
        from steelcore.model_agreement import compare_verdicts
        from steelcore.postgres.model_evidence import read_evidence

        evidence = read_evidence(self.summary.engine, shadow, production_version=production)
        return compare_verdicts(evidence.frames, evidence.verdicts)

    def _judged_by(self, version: int) -> int:
        from steelcore.postgres.line_reads import frames_judged_by

        return frames_judged_by(self.summary.engine, self.args.line, self.started, version)

    @staticmethod
    def _retrain_note(out: Path) -> str:
        """Where the candidate went and how it compares with production on each evaluated set."""
        try:
            report = json.loads((out / "retrain.json").read_text())
        except (OSError, ValueError):
            return f"written to {out}"
        scores = []
        for name, row in (report.get("comparison") or {}).items():
            try:
                before, after = row["production"]["mean_dice"], row["candidate"]["mean_dice"]
                scores.append(f"{name} mean Dice {before:.4f} (production) -> {after:.4f}")
            except (KeyError, TypeError):
                continue
        return f"written to {out}" + (f"; {'; '.join(scores)}" if scores else "")

    # --- report ---------------------------------------------------------------------------------
    def _report(self, final: dict[str, Any], code: int) -> int:
        final["scene"] = {"name": "lifecycle", "steps": self.steps, "verdicts": self.verdicts}
        path = Path(self.run_dir) / "lifecycle-scene.json"
        path.write_text(json.dumps(final["scene"], indent=2, default=str) + "\n")
        self._say(f"steel demo: scene steps in {path}")
        return super()._report(final, code)


class Screenshots:
    """The dashboard in headless Chromium (Debian's package, driven by Playwright as in
    tests/integration/test_dashboard_browser.py), one PNG per step."""

    def __init__(self, base_url: str, folder: Path) -> None:
        self.base_url, self.folder = base_url, folder
        self._api: Any = None
        self._browser: Any = None

    def _page(self) -> Any:
        if self._browser is None:
            import subprocess

            from playwright.sync_api import sync_playwright

            found = subprocess.run(
                ["bash", str(REPO_ROOT / "scripts" / "ensure_chromium.sh")],
                capture_output=True,
                text=True,
                check=False,
            )
            if found.returncode != 0:
                raise RuntimeError(f"no headless Chromium: {found.stderr.strip()}")
            self._api = sync_playwright().start()
            self._browser = self._api.chromium.launch(
                executable_path=found.stdout.strip().splitlines()[-1], args=["--no-sandbox", "--disable-gpu"]
            )
        return self._browser.new_page(viewport={"width": SCREENSHOT_WIDTH, "height": 1000})

    def take(self, name: str, page_name: str, wait_text: str) -> Path:
        page = self._page()
        try:
            # The live page is the app's default page: it lives at the root, not at /live.
            page.goto(f"{self.base_url}/{'' if page_name == 'live' else page_name}")
            page.get_by_text(wait_text).first.wait_for(timeout=PAGE_WAIT_MS)
            page.set_viewport_size({"width": SCREENSHOT_WIDTH, "height": SCREENSHOT_HEIGHTS[page_name]})
            page.wait_for_timeout(2500)  # fragments and charts settle at the new size
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}.png"
            # The health page's worker metrics (long tables of counters) tell nothing about the step.
            cut = page.get_by_text("Worker metrics", exact=True)
            box = cut.first.bounding_box() if cut.count() else None
            if box is not None and box["y"] > 0:
                clip = {"x": 0, "y": 0, "width": SCREENSHOT_WIDTH, "height": box["y"] - 8}
                page.screenshot(path=str(path), clip=clip)
            else:
                page.screenshot(path=str(path))
            return path
        finally:
            page.close()

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._api is not None:
            self._api.stop()


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
