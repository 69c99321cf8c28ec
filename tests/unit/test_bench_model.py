"""`steel bench model` end to end on the small preset (no speed assertions: the target is the benchmark's)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from steelcore import exit_codes
from steelcore.cli import main
from steelcore.postprocess import PROBABILITY_CODES
from training.networks import build_model, preset


def _run(tmp_path: Path, target_ms: str) -> tuple[int, dict]:
    out = tmp_path / "model.json"
    args = ["bench", "model", "--quick", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    code = main([*args, "--target-ms", target_ms, "--json", str(out)])
    return code, json.loads(out.read_text())


def test_bench_model_json_structure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, payload = _run(tmp_path, "1e9")
    assert code == exit_codes.OK
    assert payload["benchmark"] == "model"
    assert payload["config"]["quick"] is True and payload["config"]["threads"] == 1
    rows = {r["name"]: r for r in payload["results"]}
    assert set(rows) == {"small/classifier", "small/segmenter", "small/classifier+segmenter"}
    for name in ("small/classifier", "small/segmenter"):
        row = rows[name]
        task = name.split("/")[1]
        # The parameter count is the model's own, not something the benchmark made up.
        model = build_model(task, preset("small", task))  # type: ignore[arg-type]
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["gflops_per_frame"] > 0
        for key in ("ms_per_frame_b1", "ms_per_frame_b8", "ms_per_frame_b8_channels_last"):
            assert row[key] > 0
        assert len(row["samples_ms_b8"]) == 1
    # FLOPs of the segmenter (full-resolution output) dwarf those of the half-resolution classifier.
    assert rows["small/segmenter"]["gflops_per_frame"] > rows["small/classifier"]["gflops_per_frame"]
    pair = rows["small/classifier+segmenter"]
    assert pair["target_met"] is True and pair["target_ms_per_frame"] == 1e9
    assert (tmp_path / "model.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "small/segmenter" in printed and ": met" in printed


def test_bench_model_reports_a_missed_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, payload = _run(tmp_path, "0.001")
    assert code == exit_codes.FAILURE
    pair = next(r for r in payload["results"] if r["task"] == "pair")
    assert pair["target_met"] is False
    assert "NOT met" in capsys.readouterr().out


def _runtime_run(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A random-weights bundle, the results file, and a one-round `steel bench model` timing its pair."""
    from random_bundle import save_random_bundle

    from training.model_bundle import PostprocessParams

    bundle = save_random_bundle(
        tmp_path / "random-bench",
        name="random-bench",
        description="random weights",
        seed=0,
        postprocess=PostprocessParams.neutral(4),
        provenance={},
    )
    out = tmp_path / "model.json"
    args = ["bench", "model", "--quick", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-plot"]
    return bundle, out, [*args, "--target-ms", "1e9", "--runtime-model", str(bundle), "--json", str(out)]


@pytest.mark.openvino
def test_bench_model_compares_the_cpu_runtime_with_eager_torch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openvino")
    bundle, out, args = _runtime_run(tmp_path)
    assert main(args) == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["runtime_model"] == str(bundle)
    rows = {r["runtime"]: r for r in payload["results"] if r["task"] == "runtime"}
    assert {"torch", "openvino-f32"} <= set(rows)
    assert rows["torch"]["speedup_vs_torch_b8"] == pytest.approx(1.0)
    f32 = rows["openvino-f32"]
    assert f32["precision"] == "f32" and f32["target_speedup"] == 2.5
    # Eager torch's float32 maps, less only the rounding to the uint8 codes the runtime answers.
    assert f32["max_abs_diff_seg_probs"] < 0.5 / PROBABILITY_CODES + 1e-5
    for b in (1, 8):
        assert f32[f"ms_per_frame_b{b}"] > 0 and f32[f"speedup_vs_torch_b{b}"] > 0
    assert "CPU runtime vs eager torch" in capsys.readouterr().out


@pytest.mark.openvino
def test_bench_model_emulates_an_avx2_only_cpu(tmp_path: Path) -> None:
    """`--cpu-isa avx2` runs again in a fresh interpreter with torch and oneDNN capped, and OpenVINO
    compiles at f32 there (its own CPU detection still sees this CPU's bf16)."""
    pytest.importorskip("openvino")
    import subprocess
    import sys

    from benchmarks import cpu_emulation

    _, out, args = _runtime_run(tmp_path)
    args += ["--cpu-isa", "avx2"]
    env = {k: v for k, v in os.environ.items() if k not in cpu_emulation.CAPS["avx2"]}
    done = subprocess.run(
        [sys.executable, "-m", "steelcore.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == exit_codes.OK, done.stderr[-3000:]
    assert "emulating an AVX2-only CPU" in done.stdout
    config = json.loads(out.read_text())["config"]
    assert config["cpu_isa"] == "avx2" and config["caps"] == cpu_emulation.CAPS["avx2"]
    assert config["torch_cpu_capability"] == "AVX2"
    rows = {r["runtime"]: r for r in json.loads(out.read_text())["results"] if r["task"] == "runtime"}
    assert set(rows) == {"torch", "openvino-f32"}  # "auto" is f32 without native bf16
    assert rows["openvino-f32"]["precision"] == "f32"


def test_time_rounds_leaves_the_settling_pause_out_of_the_samples() -> None:
    import time

    from benchmarks.model_timing import Case, time_rounds

    calls: list[float] = []
    cases = [Case(name, 1, lambda: calls.append(time.perf_counter())) for name in ("a", "b")]
    time_rounds(cases, warmup=0, repeats=3, settle_s=0.05)
    assert len(calls) == 6
    # Every call waited for the pause before it ...
    assert min(b - a for a, b in itertools.pairwise(calls)) >= 0.05
    # ... and none of it was timed.
    assert max(s for case in cases for s in case.samples_ms) < 25
