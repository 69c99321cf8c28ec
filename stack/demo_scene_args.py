"""The options of `steel demo --scene lifecycle` (stack.demo_scene), parsed and checked with the demo's."""

from __future__ import annotations

import argparse
from pathlib import Path

from steelcore.paths import REPO_ROOT
from steelcore.settings import Settings

SCENES = ("lifecycle",)
DRIFT_CAMERA = 2  # cameras are cam1..camN; this one dims


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
