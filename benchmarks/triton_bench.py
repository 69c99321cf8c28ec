"""`steel bench triton`: the Triton ensemble and cascade against in-process torch, on the same frames.

Three comparisons, in one run:

1. ``steel_ensemble`` at concurrency 1, 2 and 4 (requests in flight) and batch sizes 1 and 8:
   frames/s and p50/p99 request latency, beside in-process ``predict_probs`` +
   ``apply_postprocess`` + RLE on the same frames and batch sizes (one caller, torch using every
   core), with the ratio Triton / in-process.
2. ``steel_cascade`` against ``steel_ensemble`` on a realistic mix from the synthetic camera
   (about half the frames clean): throughput gain, share of frames the cascade segmented, and
   how often both give identical RLE strings.
3. For every case, Triton's metrics endpoint is scraped before and after, splitting each model's
   time into queue and compute (``nv_inference_queue_duration_us``,
   ``nv_inference_compute_infer_duration_us``) with request and execution counts (so the mean
   dynamic batch size shows).

A server is started on free ports from a repository written for the bundle, unless ``--url``
names a running one. Results go to bench-results/triton.json (+ .png) and a table.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.closed_loop import batches_of, closed_loop, real_frames, synthetic_frames
from benchmarks.triton_metrics import scrape, split_time
from benchmarks.triton_report import plot_results, print_results
from steelcore import exit_codes

NAME = "triton"
CONCURRENCY = (1, 2, 4)
BATCH_SIZES = (1, 8)


def in_process_call(
    bundle_path: Path, runtime: str = "torch", threads: int | None = None
) -> Callable[[np.ndarray], object]:
    """predict_probs + apply_postprocess + RLE, the work the ensemble does, in this process.

    ``runtime``: "torch" (eager) or "openvino" (training.openvino_bundle, the networks the openvino
    repository serves: the bundle's int8 ones where it has them), so the ratio measures serving
    overhead, not a change of runtime.
    """
    from steelcore.postprocess import apply_postprocess, class_areas
    from steelcore.rle import encode_stack
    from training.inference import predict_probs
    from training.model_bundle import load_bundle
    from training.openvino_bundle import attach_runtime, serving_precision

    bundle = load_bundle(bundle_path)
    bundle = attach_runtime(
        bundle, runtime, threads, serving_precision(bundle) if runtime != "torch" else "auto"
    )

    def call(frames: np.ndarray) -> object:
        if bundle.runtime is not None:  # the segmenter's uint8 codes, as the repository passes them on
            cls_probs, seg_probs = bundle.runtime.served(frames)
        else:
            cls_probs, seg_probs = predict_probs(bundle, frames)
        masks = apply_postprocess(cls_probs, seg_probs, bundle.postprocess)
        return class_areas(masks), [encode_stack(m) for m in masks]

    return call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="bundle name or path (default: settings model_name)")
    parser.add_argument("--url", default=None, help="a running Triton (host:port); default: start one")
    parser.add_argument("--metrics-url", default=None, help="its metrics endpoint (with --url)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--format",
        choices=("openvino", "torchscript"),
        default="openvino",
        help="repository the started server serves (default openvino, as triton_models/); the "
        "in-process baseline runs the same runtime: openvino, or eager torch for torchscript",
    )
    parser.add_argument("--frames", type=int, default=16, help="distinct synthetic frames (default 16)")
    parser.add_argument("--frames-per-case", type=int, default=64, help="frames sent per case (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic camera seed")
    parser.add_argument(
        "--real",
        type=Path,
        default=None,
        help="also compare cascade and ensemble on the real frames of this Kaggle-layout folder (all of "
        "them, then the defect-free ones alone: what the cascade's gate saves on a clean strip)",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="in-process torch threads (default: all cores)"
    )
    report.add_output_arguments(parser, "triton")


def _start_server(bundle_path: Path, work: Path, fmt: str = "openvino") -> Any:
    from stack.service import free_port
    from stack.triton_server import TritonServer
    from training.triton_export import write_repository

    repo = write_repository(bundle_path, work / "repository", fmt)  # type: ignore[arg-type]
    server = TritonServer(
        work / "run",
        repo,
        free_port(),
        free_port(),
        free_port(),
        wait_for=("steel_ensemble", "steel_cascade"),
    )
    server.start(timeout_s=300)
    return server


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from steelcore.settings import get_settings
    from steelcore.triton.ensemble_client import TritonEnsembleClient
    from steelcore.triton.exceptions import TritonClientError
    from training.model_bundle import resolve_bundle_path

    if args.frames < 1 or args.frames_per_case < 1:
        raise ValueError("--frames and --frames-per-case must be positive")
    bundle_path = resolve_bundle_path(args.model or get_settings().model_name)
    if not (bundle_path / "model.json").is_file():
        raise ValueError(f"no model bundle at {bundle_path}: train one or pass --model PATH")
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)

    frames, clean = synthetic_frames(args.seed, args.frames)
    print(f"{len(frames)} synthetic frames, {clean} clean; bundle {bundle_path}")
    results: list[dict[str, Any]] = []
    config: dict[str, Any] = {
        "bundle": str(bundle_path),
        "protocol": args.protocol,
        "format": args.format,
        "frames": len(frames),
        "clean_frames": clean,
        "frames_per_case": args.frames_per_case,
        "torch_threads_in_process": torch.get_num_threads(),
        # The team shares the cores: a load above the core count before the run means noisy figures.
        "load_average_before": os.getloadavg(),
    }

    with tempfile.TemporaryDirectory(prefix="steel-bench-triton-") as work:
        server = None
        try:
            if args.url:
                url, metrics_url = args.url, args.metrics_url
            else:
                print("starting the embedded Triton server ...", flush=True)
                server = _start_server(bundle_path, Path(work), args.format)
                url = server.grpc_url if args.protocol == "grpc" else server.http_url
                metrics_url = server.metrics_url
                config["server_startup_s"] = server.startup_s
                print(f"Triton ready in {server.startup_s:.1f} s", flush=True)
            clients = {
                model: TritonEnsembleClient(
                    url, args.protocol, model, timeout_s=300, max_in_flight=max(CONCURRENCY)
                )
                for model in ("steel_ensemble", "steel_cascade")
            }
            try:
                results += _ensemble_vs_in_process(
                    clients["steel_ensemble"], bundle_path, frames, metrics_url, args
                )
                results += _cascade_vs_ensemble(clients, frames, metrics_url, args)
                if args.real is not None:
                    real, clean_real = real_frames(args.real)
                    config["real_frames"] = {
                        "folder": str(args.real),
                        "all": len(real),
                        "clean": len(clean_real),
                    }
                    results += _cascade_vs_ensemble(clients, real, metrics_url, args, "real frames")
                    results += _cascade_vs_ensemble(
                        clients, clean_real, metrics_url, args, "real clean frames"
                    )
            finally:
                for client in clients.values():
                    client.close()
        except TritonClientError as exc:
            print(f"steel bench triton: {exc}")
            return exit_codes.UNAVAILABLE
        finally:
            if server is not None:
                server.stop()

    config["load_average_after"] = os.getloadavg()
    print_results(results)
    path = report.write_results(NAME, results, config, args.json)
    if not args.no_plot:
        plot_results(results, path.with_suffix(".png"))
    print(f"results: {path}")
    return exit_codes.OK


def _case(
    label: str,
    call: Callable[[np.ndarray], object],
    batches: list[np.ndarray],
    concurrency: int,
    metrics_url: str | None,
) -> dict[str, Any]:
    call(batches[0])  # warm-up: first-request costs are not what a running line pays
    before = scrape(metrics_url)
    measured = closed_loop(call, batches, concurrency)
    measured.update(candidate=label, batch=len(batches[0]), concurrency=concurrency)
    if metrics_url:
        measured["triton_split"] = split_time(before, scrape(metrics_url))
    print(
        f"  {label:<16} batch {measured['batch']} x{concurrency}: {measured['frames_per_s']:.1f} frames/s, "
        f"p50 {measured['p50_ms']:.0f} ms",
        flush=True,
    )
    return measured


def _ensemble_vs_in_process(
    client: Any, bundle_path: Path, frames: np.ndarray, metrics_url: str | None, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from training.model_bundle import load_bundle
    from training.openvino_bundle import serving_precision

    runtime = "openvino" if args.format == "openvino" else "torch"
    precision = serving_precision(load_bundle(bundle_path)) if runtime == "openvino" else "f32"
    print(f"ensemble vs in-process ({runtime}, {precision})", flush=True)
    local = in_process_call(bundle_path, runtime, args.torch_threads)
    # With OpenVINO serving, eager torch in-process is measured too: the gain of the whole change.
    eager = in_process_call(bundle_path, "torch", args.torch_threads) if runtime != "torch" else None
    rows = []
    for batch in BATCH_SIZES:
        batches = batches_of(frames, batch, args.frames_per_case)
        baseline = _case("in-process", local, batches, 1, None)
        baseline["comparison"] = "ensemble_vs_in_process"
        baseline.update(runtime=runtime, precision=precision)
        rows.append(baseline)
        torch_row = None
        if eager is not None:
            torch_row = _case("in-process-torch", eager, batches, 1, None)
            torch_row.update(comparison="ensemble_vs_in_process_torch", runtime="torch")
            torch_row["ratio_vs_in_process"] = report.ratio(
                1 / baseline["frames_per_s"], 1 / torch_row["frames_per_s"]
            )
            rows.append(torch_row)
        for concurrency in CONCURRENCY:
            row = _case("triton-ensemble", client.infer, batches, concurrency, metrics_url)
            row["comparison"] = "ensemble_vs_in_process"
            row.update(runtime=runtime, precision=precision)
            row["ratio_vs_in_process"] = report.ratio(1 / baseline["frames_per_s"], 1 / row["frames_per_s"])
            if torch_row is not None:
                row["ratio_vs_in_process_torch"] = report.ratio(
                    1 / torch_row["frames_per_s"], 1 / row["frames_per_s"]
                )
            rows.append(row)
    return rows


def _cascade_vs_ensemble(
    clients: dict[str, Any],
    frames: np.ndarray,
    metrics_url: str | None,
    args: argparse.Namespace,
    source: str = "synthetic mix",
) -> list[dict[str, Any]]:
    print(f"cascade vs ensemble on the {source}", flush=True)
    # The cascade segments a subset of each batch; CPU results can differ in the last bits between
    # batch sizes, so a pixel at its threshold may flip. This share says how often that happened.
    ensemble_rles = clients["steel_ensemble"].infer(frames).rles
    cascade_rles = clients["steel_cascade"].infer(frames).rles
    identical = sum(a == b for a, b in zip(ensemble_rles, cascade_rles, strict=True)) / len(frames)
    rows = []
    concurrency = 2
    for batch in BATCH_SIZES:
        batches = batches_of(frames, batch, args.frames_per_case)
        plain = _case("triton-ensemble", clients["steel_ensemble"].infer, batches, concurrency, metrics_url)
        cascade = _case("triton-cascade", clients["steel_cascade"].infer, batches, concurrency, metrics_url)
        for row in (plain, cascade):
            row["comparison"] = "cascade_vs_ensemble" if source == "synthetic mix" else f"cascade ({source})"
            row["frames_source"] = source
        cascade["gain_vs_ensemble"] = cascade["frames_per_s"] / plain["frames_per_s"]
        cascade["identical_rle_share"] = identical
        segmenter = cascade.get("triton_split", {}).get("segmenter")
        if segmenter:
            cascade["segmented_share"] = segmenter["frames"] / cascade["frames"]
        rows += [plain, cascade]
    return rows
