"""The embedded Triton launcher (triton_server, triton_wheel, triton_shm, serving_repository) and
`steel triton`, without starting a server."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from stack import triton_cli, triton_wheel
from stack.serving_repository import prepare_serving_repository
from stack.triton_errors import EmbeddedTritonUnavailableError
from stack.triton_server import TritonServer
from stack.triton_shm import SHM_GLOB, clean_stale_shm
from steelcore import exit_codes


def test_stale_shm_regions_are_removed_but_held_ones_kept(tmp_path: Path) -> None:
    stale = tmp_path / "triton_python_backend_shm_region_steel1_dead"
    held = tmp_path / "triton_python_backend_shm_region_steel2_alive"
    other = tmp_path / "not_a_triton_region"
    for path in (stale, held, other):
        path.write_bytes(b"x")
    fd = os.open(held, os.O_RDONLY)  # a live process holding it, as a running stub does
    try:
        removed = clean_stale_shm(tmp_path)
    finally:
        os.close(fd)
    assert removed == [stale]
    assert not stale.exists() and held.exists() and other.exists()


def test_missing_library_gives_unavailable_with_external_server_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triton_wheel, "_missing_libraries", lambda binary, env: ["libpython3.11.so.1.0"])
    (tmp_path / "repo" / "steel_ensemble").mkdir(parents=True)
    (tmp_path / "repo" / "steel_ensemble" / "config.pbtxt").write_text('name: "steel_ensemble"\n')
    server = TritonServer(tmp_path / "run", tmp_path / "repo", 1, 2, 3)
    with pytest.raises(EmbeddedTritonUnavailableError) as info:
        server.start(timeout_s=1)
    message = str(info.value)
    assert "libpython3.11.so.1.0" in message and "STEEL_TRITON_URL" in message
    assert not server.running()


def test_missing_model_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    with pytest.raises(ValueError, match="no model steel_ensemble"):
        TritonServer(tmp_path / "run", tmp_path / "repo", 1, 2, 3).start(timeout_s=1)


def test_server_command_uses_the_given_ports_and_its_own_shm_prefix(tmp_path: Path) -> None:
    server = TritonServer(tmp_path / "run", tmp_path / "repo", 18000, 18001, 18002)
    command = server._command(tmp_path / "server")
    assert {"--http-port=18000", "--grpc-port=18001", "--metrics-port=18002"} <= set(command)
    prefix = next(a for a in command if "shm-region-prefix-name" in a).rsplit("=", 1)[1]
    assert Path("/dev/shm", prefix + "x").match(SHM_GLOB)
    assert server.grpc_url == "127.0.0.1:18001" and server.metrics_url.endswith(":18002/metrics")


def cli_args(repository: Path, tmp_path: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    triton_cli.add_arguments(parser)
    return parser.parse_args(
        ["--repository", str(repository), "--run-dir", str(tmp_path / "run"), "--check", "--timeout", "1"]
    )


def test_cli_reports_an_incomplete_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "repo" / "steel_ensemble"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "steel_ensemble"\nbackend: "python"\n'
        'parameters: { key: "model_file" value: { string_value: "segmenter.pt" } }\n'
    )
    assert triton_cli.run(cli_args(tmp_path / "repo", tmp_path)) == exit_codes.BAD_INPUT
    err = capsys.readouterr().err
    assert "segmenter.pt is missing" in err and "model.py is missing" in err and "steel export" in err
    assert "repository.json is missing" in err


def test_cli_exits_unavailable_when_the_binary_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(triton_wheel, "_missing_libraries", lambda binary, env: ["libpython3.11.so.1.0"])
    model = tmp_path / "repo" / "steel_ensemble"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "steel_ensemble"\nplatform: "ensemble"\n')
    (tmp_path / "repo" / "repository.json").write_text("{}")
    assert triton_cli.run(cli_args(tmp_path / "repo", tmp_path)) == exit_codes.UNAVAILABLE
    assert "STEEL_TRITON_URL" in capsys.readouterr().err


def test_explicit_model_control_unless_the_caller_chooses(tmp_path: Path) -> None:
    command = TritonServer(tmp_path / "run", tmp_path / "repo", 1, 2, 3)._command(tmp_path / "server")
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(command)
    chosen = ["--model-control-mode=explicit", "--load-model=steel_ensemble"]
    server = TritonServer(tmp_path / "run", tmp_path / "repo", 1, 2, 3, extra_args=chosen)
    command = server._command(tmp_path / "server")
    assert "--load-model=*" not in command and command[-2:] == chosen
    assert command.count("--model-control-mode=explicit") == 1


def test_serving_repository_is_a_copy_kept_across_starts(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "segmenter" / "1").mkdir(parents=True)
    (source / "segmenter" / "config.pbtxt").write_text("a")
    (source / "repository.json").write_text('{"written_at": 1}')
    serving = prepare_serving_repository(source, tmp_path / "serving")
    assert (serving / "segmenter" / "config.pbtxt").read_text() == "a"
    # The lifecycle added version 2 and changed the config: a re-export of the source is not copied over it.
    (serving / "segmenter" / "2").mkdir()
    (serving / "segmenter" / "config.pbtxt").write_text("b")
    (source / "repository.json").write_text('{"written_at": 2}')
    prepare_serving_repository(source, serving)
    assert (serving / "segmenter" / "config.pbtxt").read_text() == "b"
    # A copy still holding version 1 alone follows a re-export of its source.
    (serving / "segmenter" / "2").rmdir()
    prepare_serving_repository(source, serving)
    assert (serving / "segmenter" / "config.pbtxt").read_text() == "a"
