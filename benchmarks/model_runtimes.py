"""`steel bench model`'s runtime comparison: one bundle's classifier + segmenter pair on uint8 frames
in eager torch with float32 maps (the baseline issue 14 set: ``eager_fp32_maps``), against the
OpenVINO CPU runtime that ``triton_models/`` serves (``training.openvino_bundle``) at f32 and at its
"auto" precision (bf16 where the CPU computes it natively) and, when the bundle has them, its int8
networks (``steel quantize``), timed in the same rounds as the
networks, with output parity on one frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.model_timing import BATCH_SIZES, Case
from benchmarks.report import print_table, ratio

# Issue 14: the CPU runtime's forward of the small pair at least this many times faster than eager torch.
RUNTIME_TARGET_SPEEDUP = 2.5
RUNTIME_PREFIX = "runtime/"


def _bind(fn: Callable[[Any], object], frames: Any) -> Callable[[], object]:
    return lambda: fn(frames)


def eager_fp32_maps(bundle: Any, frames: Any) -> tuple[Any, Any]:
    """The baseline issue 14 measures against: eager torch as ``predict_probs`` ran it before the
    segmenter answered uint8 codes (sigmoid over the full-resolution float32 logits)."""
    import numpy as np
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(frames)).unsqueeze(1).float().div_(255.0)
        seg = torch.sigmoid(bundle.segmenter(x)).float().numpy()
        cls = torch.sigmoid(bundle.classifier(x)).float().numpy() if bundle.classifier is not None else None
    return cls, seg


def runtime_cases(
    bundle_name: str, threads: int, frames_u8: dict[int, Any], native_bf16: bool = True
) -> tuple[list[Case], dict]:
    """Eager torch vs OpenVINO (f32, auto, int8) on one bundle's pair; and the precision each case
    ran at. ``native_bf16=False`` (an emulated CPU without bf16) runs "auto" as such a CPU does, f32:
    OpenVINO detects the real CPU's bf16 and would pick kernels the emulation took away."""
    from training.model_bundle import load_bundle
    from training.openvino_bundle import INT8, openvino_pair
    from training.quantize import int8_files

    bundle = load_bundle(bundle_name)
    candidates: dict[str, Any] = {"torch": lambda f: eager_fp32_maps(bundle, f)}
    precisions = {"torch": "f32"}
    unquantized = "auto" if native_bf16 else "f32"
    for precision in ("f32", "auto", INT8):
        if precision == INT8 and not int8_files(bundle.path):
            continue  # never quantised (`steel quantize`)
        if precision == "auto" and not native_bf16:
            continue  # "auto" is f32 there
        pair = openvino_pair(bundle, threads, precision, unquantized)
        if precision == "auto" and pair.precision == precisions.get("openvino-f32"):
            continue  # this CPU has no faster precision: "auto" is f32 again
        # Timed as served: the segmenter's uint8 codes, not converted back to float.
        candidates[f"openvino-{precision}"] = pair.served
        precisions[f"openvino-{precision}"] = pair.precision
    cases = [
        Case(f"{RUNTIME_PREFIX}{name}@b{b}", b, _bind(fn, frames_u8[b]))
        for name, fn in candidates.items()
        for b in BATCH_SIZES
    ]
    info = {
        "bundle": bundle.name,
        "bundle_path": bundle.path,
        "precisions": precisions,
        "unquantized": unquantized,
    }
    return cases, info


def runtime_rows(by_name: dict[str, Case], info: dict[str, Any], frame_u8: Any) -> list[dict[str, Any]]:
    import numpy as np

    from training.model_bundle import load_bundle
    from training.openvino_bundle import openvino_pair

    # Output parity on one frame, next to the speed: the largest probability difference from
    # eager torch's float32 maps (the codes' rounding, 0.5/255, included).
    bundle = load_bundle(info["bundle_path"])
    _, reference = eager_fp32_maps(bundle, frame_u8)
    rows = []
    torch_ms = {b: by_name[f"{RUNTIME_PREFIX}torch@b{b}"].median_ms for b in BATCH_SIZES}
    for name, precision in info["precisions"].items():
        row: dict[str, Any] = {
            "name": f"{info['bundle']}/pair {name}",
            "task": "runtime",
            "runtime": name,
            "precision": precision,
        }
        for b in BATCH_SIZES:
            case = by_name[f"{RUNTIME_PREFIX}{name}@b{b}"]
            row[f"ms_per_frame_b{b}"] = case.median_ms
            row[f"min_ms_per_frame_b{b}"] = case.min_ms
            row[f"samples_ms_b{b}"] = case.samples_ms
            row[f"speedup_vs_torch_b{b}"] = ratio(torch_ms[b], case.median_ms)
        if name != "torch":
            _, seg = openvino_pair(bundle, 1, name.removeprefix("openvino-"), info["unquantized"])(frame_u8)
            row["max_abs_diff_seg_probs"] = float(np.abs(seg - reference).max())
            row["target_speedup"] = RUNTIME_TARGET_SPEEDUP
            speedups = [row[f"speedup_vs_torch_b{b}"] for b in BATCH_SIZES]
            row["target_met"] = min(speedups) >= RUNTIME_TARGET_SPEEDUP
        rows.append(row)
    return rows


def print_runtime_rows(results: list[dict[str, Any]]) -> None:
    runtimes = [r for r in results if r["task"] == "runtime"]
    if runtimes:
        print_table(
            ["pair", "precision", "ms/fr b1", "ms/fr b8", "min b8", "x torch b1", "x torch b8", "max|dp|"],
            [
                [
                    r["name"],
                    r["precision"],
                    r["ms_per_frame_b1"],
                    r["ms_per_frame_b8"],
                    r["min_ms_per_frame_b8"],
                    r["speedup_vs_torch_b1"],
                    r["speedup_vs_torch_b8"],
                    r.get("max_abs_diff_seg_probs", "-"),
                ]
                for r in runtimes
            ],
            title=f"\nCPU runtime vs eager torch, same rounds (target {RUNTIME_TARGET_SPEEDUP:g}x)",
        )
        for r in runtimes:
            if "target_met" in r:
                verdict = "met" if r["target_met"] else "NOT met"
                print(
                    f"{r['name']}: {r['speedup_vs_torch_b1']:.2f}x at batch 1, "
                    f"{r['speedup_vs_torch_b8']:.2f}x at batch 8 "
                    f"(target {RUNTIME_TARGET_SPEEDUP:g}x): {verdict}"
                )
