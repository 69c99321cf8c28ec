"""`steel demo --scene lifecycle`: its options are checked before anything starts, and only the
drifting camera gets the dimmed lamp."""

from __future__ import annotations

import argparse
import os

import pytest

from stack.demo import add_arguments, check_arguments
from stack.demo_scene import LifecycleScene
from stack.demo_scene_args import DRIFT_CAMERA
from steelcore.settings import Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--scene", "lifecycle", "--frames", "40"), "leave out --frames"),
        (("--scene", "lifecycle", "--cameras", "1"), "--cameras >= 2"),
        (("--scene", "lifecycle", "--drift-gain", "1.5"), "--drift-gain"),
        (("--scene", "lifecycle", "--drift-window", "0"), "--drift-window"),
        (("--scene", "lifecycle", "--shadow-share", "0"), "--shadow-share"),
        (("--scene", "lifecycle", "--no-dashboard"), "screenshots need the dashboard"),
    ],
)
def test_bad_scene_options_are_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_arguments(parse(*argv))


def test_scene_options_are_ignored_without_a_scene() -> None:
    check_arguments(parse("--frames", "40", "--cameras", "1", "--drift-gain", "3"))
    with pytest.raises(SystemExit):
        parse("--scene", "unknown")


def test_only_the_drifting_camera_dims(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Set first so that monkeypatch restores the environment after the scene changes it.
    monkeypatch.setenv("STEEL_DRIFT_WINDOW_FRAMES", "300")
    args = parse("--scene", "lifecycle", "--drift-after", "12", "--drift-gain", "0.4", "--drift-window", "7")
    check_arguments(args)
    scene = LifecycleScene(Settings(run_dir=tmp_path), args)
    extra = {k: scene._camera_args(k) for k in range(3)}
    assert extra[DRIFT_CAMERA - 1] == ["--gain", "0.4", "--change-after", "12"]
    assert [v for k, v in extra.items() if k != DRIFT_CAMERA - 1] == [[], []]
    assert os.environ["STEEL_DRIFT_WINDOW_FRAMES"] == "7"  # the workers it starts read it
