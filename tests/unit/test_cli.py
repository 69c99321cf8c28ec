"""The `steel` console script: every subcommand explains itself and exit codes mean something."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from steelcore import exit_codes
from steelcore.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == exit_codes.USAGE


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == exit_codes.USAGE


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_module_exists_and_has_help(name: str) -> None:
    module = COMMANDS[name].module
    assert importlib.util.find_spec(module) is not None, f"{name}: module {module} missing"
    proc = subprocess.run(
        [sys.executable, "-m", "steelcore.cli", name, "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert f"steel {name}" in proc.stdout
