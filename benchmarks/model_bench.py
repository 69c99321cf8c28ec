"""`steel bench model`: forward time, parameters and FLOPs of the classifier and segmenter presets.

All cases are timed in interleaved rounds (benchmarks.model_timing). Reported per 256x1600 frame:

- ms/frame at batch 1 and batch 8 (eager, inference mode), and at batch 8 with channels-last weights
  (the layout load_bundle serves);
- parameters and GFLOPs (torch.utils.flop_counter, 2 FLOPs per multiply-add);
- the small classifier + segmenter pair at batch 8, as served, against the CPU target (TARGET_MS_PER_FRAME);
- a reference ResUNet of ResNet-18 widths at full resolution, and how many times slower it is;
- the runtimes (``--runtime-model``, by default the shipped ``default`` bundle with its trained
  weights): eager torch against OpenVINO at f32 and "auto" precision (benchmarks.model_runtimes).
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from benchmarks import cpu_emulation, model_runtimes
from benchmarks.model_timing import BATCH_SIZES, TARGET_BATCH, Case, time_rounds
from benchmarks.report import (
    add_common_arguments,
    print_table,
    ratio,
    results_path,
    save_bar_chart,
    write_results,
)
from steelcore import exit_codes
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

if TYPE_CHECKING:
    import torch
    from torch import nn

NAME = "model"
# Product target on the 2-core CPU box: classifier + segmenter, batch 8, per 256x1600 frame.
TARGET_MS_PER_FRAME = 50.0
DEFAULT_THREADS = 2
REFERENCE_KEY = "reference/resnet18-resunet-full"
PAIR_CASE = "small/pair"
# The design the small preset is measured against: a textbook ResNet-18 ResUNet at full resolution.
REFERENCE_CONFIG: dict[str, Any] = {
    "widths": [64, 64, 128, 256, 512],
    "blocks": [2, 2, 2, 2],
    "decoder_widths": [256, 128, 64, 32, 16],
    "input_scale": 1.0,
    "space_to_depth": 1,
    "stem_convs": 1,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, repeats=5, warmup=1)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads (default 2)")
    parser.add_argument(
        "--quick", action="store_true", help="small preset only: no large preset, no reference"
    )
    parser.add_argument(
        "--runtime-model",
        default=None,
        help="bundle whose pair is timed in eager torch against OpenVINO (default: default, "
        "none with --quick)",
    )
    parser.add_argument(
        "--target-ms",
        type=float,
        default=TARGET_MS_PER_FRAME,
        help=f"ms/frame the small pair must meet at batch {TARGET_BATCH} (default {TARGET_MS_PER_FRAME:g})",
    )
    parser.add_argument(
        "--cpu-isa",
        choices=cpu_emulation.CHOICES,
        default=cpu_emulation.NATIVE,
        help="time as on a CPU with at most this instruction set: avx2 caps torch and OpenVINO "
        "(oneDNN) to AVX2, no bf16, no VNNI (default: native, this CPU's own)",
    )


def _count(model: nn.Module, frame: torch.Tensor) -> tuple[int, float]:
    """Parameters and GFLOPs of one forward pass on one frame."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(frame)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9


def _forward(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    return lambda: model(batch)


def _as_served(model: nn.Module) -> nn.Module:
    """A copy laid out as training.model_bundle.load_bundle serves it (channels-last weights)."""
    import torch

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _channels_last(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    served = _as_served(model)
    return lambda: served(batch)


def _networks(quick: bool) -> dict[str, tuple[str, str, nn.Module]]:
    """name -> (preset, task, model in eval mode) for every network the run measures."""
    from training.networks import PRESETS, build_model, preset

    networks: dict[str, tuple[str, str, nn.Module]] = {}
    for preset_name in ["small"] if quick else list(PRESETS):
        for task in ("classifier", "segmenter"):
            model = build_model(task, preset(preset_name, task)).eval()  # type: ignore[arg-type]
            networks[f"{preset_name}/{task}"] = (preset_name, task, model)
    if not quick:
        reference = build_model("segmenter", {**preset("small", "segmenter"), **REFERENCE_CONFIG}).eval()
        networks[REFERENCE_KEY] = ("reference", "segmenter", reference)
    return networks


def _cases(networks: dict[str, tuple[str, str, nn.Module]], frames: dict[int, torch.Tensor]) -> list[Case]:
    cases: list[Case] = []
    for key, (preset_name, _, model) in networks.items():
        for b in BATCH_SIZES:
            cases.append(Case(f"{key}@b{b}", b, _forward(model, frames[b])))
        if preset_name == "small":
            # Channels-last only where it decides something: the CPU preset (the others are GPU nets).
            cl = _channels_last(model, frames[TARGET_BATCH])
            cases.append(Case(f"{key}@b{TARGET_BATCH}/cl", TARGET_BATCH, cl))
    # The pair runs as load_bundle serves it: channels-last weights, ordinary input frames.
    small_cls, small_seg = (_as_served(networks[f"small/{task}"][2]) for task in ("classifier", "segmenter"))
    batch = frames[TARGET_BATCH]
    cases.append(Case(PAIR_CASE, TARGET_BATCH, lambda: (small_cls(batch), small_seg(batch))))
    return cases


def _network_rows(
    networks: dict[str, tuple[str, str, nn.Module]], by_name: dict[str, Case], frame: torch.Tensor
) -> list[dict[str, Any]]:
    rows = []
    for key, (preset_name, task, model) in networks.items():
        params, gflops = _count(model, frame)
        row: dict[str, Any] = {"name": key, "preset": preset_name, "task": task, "params": params}
        row["gflops_per_frame"] = gflops
        for b in BATCH_SIZES:
            row[f"ms_per_frame_b{b}"] = by_name[f"{key}@b{b}"].median_ms
            row[f"min_ms_per_frame_b{b}"] = by_name[f"{key}@b{b}"].min_ms
            row[f"samples_ms_b{b}"] = by_name[f"{key}@b{b}"].samples_ms
        cl_case = by_name.get(f"{key}@b{TARGET_BATCH}/cl")
        row[f"ms_per_frame_b{TARGET_BATCH}_channels_last"] = None if cl_case is None else cl_case.median_ms
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise ValueError("need --repeats >= 1, --warmup >= 0 and --threads >= 1")
    cpu_emulation.reexec_with_caps(args.cpu_isa)  # before torch loads: the new process loads it capped
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = {b: torch.rand(b, 1, FRAME_HEIGHT, FRAME_WIDTH) for b in BATCH_SIZES}
    networks = _networks(args.quick)
    cases = _cases(networks, frames)
    runtime_model = args.runtime_model or (None if args.quick else "default")
    runtime_info: dict[str, Any] | None = None
    if runtime_model:
        frames_u8 = {b: (frames[b][:, 0] * 255).to(torch.uint8).numpy() for b in BATCH_SIZES}
        runtime_cases, runtime_info = model_runtimes.runtime_cases(
            runtime_model, args.threads, frames_u8, native_bf16=args.cpu_isa == cpu_emulation.NATIVE
        )
        cases += runtime_cases
    load_before = os.getloadavg()[0]
    time_rounds(cases, args.warmup, args.repeats)
    # Other processes on a shared box inflate medians; the load average tells a reader how much.
    load = {"loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0]}

    by_name = {case.name: case for case in cases}
    results = _network_rows(networks, by_name, frames[1])
    pair = by_name[PAIR_CASE]
    met = pair.median_ms <= args.target_ms
    summary: dict[str, Any] = {
        "name": "small/classifier+segmenter",
        "preset": "small",
        "task": "pair",
        f"ms_per_frame_b{TARGET_BATCH}": pair.median_ms,
        f"min_ms_per_frame_b{TARGET_BATCH}": pair.min_ms,
        f"samples_ms_b{TARGET_BATCH}": pair.samples_ms,
        "target_ms_per_frame": args.target_ms,
        "target_met": met,
        "layout": "channels-last weights, as load_bundle serves them",
    }
    if REFERENCE_KEY in networks:
        ref_ms = by_name[f"{REFERENCE_KEY}@b{TARGET_BATCH}"].median_ms
        summary["reference_slower_than_pair"] = ratio(ref_ms, pair.median_ms)
        reference_row = next(r for r in results if r["name"] == REFERENCE_KEY)
        reference_row["slower_than_small_segmenter"] = ratio(
            ref_ms, by_name[f"small/segmenter@b{TARGET_BATCH}"].median_ms
        )
    results.append(summary)
    if runtime_info is not None:
        results += model_runtimes.runtime_rows(by_name, runtime_info, frames_u8[1])

    _report(results, args, load)
    config = {"threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, "quick": args.quick}
    config["runtime_model"] = runtime_model
    config |= {
        "frame": [FRAME_HEIGHT, FRAME_WIDTH],
        "batch_sizes": list(BATCH_SIZES),
        "target_ms": args.target_ms,
        **cpu_emulation.describe(args.cpu_isa),
        **load,
    }
    path = write_results(NAME, results, config, args.json)
    if not args.no_plot:
        nets = [r for r in results if "params" in r]
        save_bar_chart(
            results_path(NAME, args.json).with_suffix(".png"),
            f"forward time per 256x1600 frame ({args.threads} threads)",
            [r["name"] for r in nets],
            {f"batch {b}": [r[f"ms_per_frame_b{b}"] for r in nets] for b in BATCH_SIZES},
            "ms per frame",
            log_scale=True,
        )
    print(f"results: {path}")
    return exit_codes.OK if met else exit_codes.FAILURE


def _report(results: list[dict[str, Any]], args: argparse.Namespace, load: dict[str, float]) -> None:
    headers = [
        "network",
        "params (M)",
        "GFLOPs/frame",
        "ms/frame b1",
        "ms/frame b8",
        "min b8",
        "ms/frame b8 ch-last",
    ]
    rows = [
        [
            r["name"],
            r["params"] / 1e6,
            r["gflops_per_frame"],
            r["ms_per_frame_b1"],
            r["ms_per_frame_b8"],
            r["min_ms_per_frame_b8"],
            "-" if r["ms_per_frame_b8_channels_last"] is None else r["ms_per_frame_b8_channels_last"],
        ]
        for r in results
        if "params" in r
    ]
    title = (
        f"steel bench model: 256x1600 frames, {args.threads} torch threads, median of {args.repeats} rounds"
    )
    if args.cpu_isa != cpu_emulation.NATIVE:
        title += f", emulating an {args.cpu_isa.upper()}-only CPU (compare ratios, not ms)"
    print_table(headers, rows, title=title)
    pair = next(r for r in results if r["task"] == "pair")
    verdict = "met" if pair["target_met"] else "NOT met"
    print(
        f"\nsmall classifier + segmenter at batch {TARGET_BATCH}: {pair['ms_per_frame_b8']:.1f} ms/frame "
        f"median, {pair['min_ms_per_frame_b8']:.1f} min "
        f"(target {pair['target_ms_per_frame']:g} ms): {verdict}"
    )
    busiest = max(load.values())
    # Our own threads count in the load average too; more than the usable CPUs means competition.
    if busiest > max(len(os.sched_getaffinity(0)), args.threads) + 0.5:
        # Medians decide the verdict; on a shared box the minimum is the better guess of an idle one.
        print(
            f"warning: load average {busiest:.1f} means other processes competed for the CPUs and inflated "
            f"the medians; the fastest round of the pair took {pair['min_ms_per_frame_b8']:.1f} ms/frame"
        )
    model_runtimes.print_runtime_rows(results)
    if "reference_slower_than_pair" in pair:
        print(
            f"ResNet-18 ResUNet at full resolution is {pair['reference_slower_than_pair']:.1f}x slower "
            "than the small pair"
        )
