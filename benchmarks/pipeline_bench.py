"""`steel bench pipeline`: the whole pipeline (camera -> Kafka -> workers -> Triton -> Postgres + Redis)
with 1 and 2 workers, side by side with the Triton ensemble alone on the same server, in one run.

The benchmark starts its own embedded stack (random ports, a temporary run directory, Triton
serving settings.triton_repository) and, for each worker count W:

1. backlog: N synthetic frames are burst-published before the workers start; sustained frames/s
   = frames stored after the first batch / (last batch's stored_at - first batch's stored_at),
   so start-up (group join, first request) is left out;
2. steady rate: cameras publish on schedule for a while, by default at 70% of what the machine
   serves with those cameras running: the backlog throughput less the synthetic cameras' own time
   per frame (rendering and JPEG on the same cores, measured at start), the rule `steel demo`
   chooses its load by (stack.demo_capacity); camera-to-stored (stored_at - captured_at, every
   frame) and camera-to-alarm (Redis stream entry time - captured_at; the workers' alarm rule is
   set to fire on every detection so that every defective frame is measured) p50/p99;
3. the ensemble alone: ``steel bench triton``'s closed loop, batches of the worker batch size at
   concurrency W and 2W (a worker inferring ahead keeps two requests in flight), the faster of
   the two as the reference, same server;
4. per-stage time per frame (decode, infer, store, alarm, commit) from the workers' own
   ``steel_worker_stage_seconds`` histograms, and Kafka wait (received_at - captured_at).

Results: bench-results/pipeline.json, a table, and pipeline.png (frames/s) + pipeline_stages.png.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.ensemble_reference import ensemble_alone
from benchmarks.pipeline_report import STAGES, latency_pair, plot_results, print_results
from stack.demo_capacity import DEFAULT_SHARE, Capacity, camera_seconds, with_cameras
from steelcore import exit_codes

NAME = "pipeline"
STEEL = (sys.executable, "-m", "steelcore.cli")
WAIT_S = 900.0  # CPU inference on a shared machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument(
        "--frames",
        type=int,
        default=240,
        help="backlog frames per case (default 240: many fetches, so the consumer's refetching counts)",
    )
    parser.add_argument("--steady-s", type=float, default=45.0, help="steady-rate publishing per case, s")
    parser.add_argument(
        "--steady-fraction",
        type=float,
        default=DEFAULT_SHARE,
        help="steady rate as a share of what the machine serves with the bench's cameras running (the "
        "backlog throughput less the cameras' measured time per frame, as `steel demo` chooses)",
    )
    parser.add_argument(
        "--steady-fps",
        type=float,
        default=None,
        help="steady rate in frames/s, all cameras together (default: --steady-fraction, per case); one "
        "rate for every case compares their latency at the same load",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="worker batch size (default 8)")
    parser.add_argument(
        "--compare-infer-ahead",
        action="store_true",
        help="run each worker count a second time with `steel work --no-infer-ahead` (one batch at a "
        "time), side by side in the same run",
    )
    report.add_output_arguments(parser, "pipeline")


def run(args: argparse.Namespace) -> int:
    from stack.embedded_stack import EmbeddedStack
    from stack.service import free_port
    from steelcore.postgres.engine import create_db_engine
    from steelcore.postgres.migrate import upgrade
    from steelcore.service_urls import postgres_url
    from steelcore.settings import Settings

    counts = sorted({int(w) for w in str(args.workers).split(",") if w.strip()})
    if not counts or counts[0] < 1:
        raise ValueError(f"--workers must list positive worker counts, got {args.workers!r}")
    if args.frames < 2 * args.batch_size or args.steady_s <= 0 or not 0 < args.steady_fraction <= 1:
        raise ValueError("need --frames >= 2 x --batch-size, --steady-s > 0 and 0 < --steady-fraction <= 1")
    if args.steady_fps is not None and not args.steady_fps > 0:
        raise ValueError(f"--steady-fps must be positive, got {args.steady_fps}")

    with tempfile.TemporaryDirectory(prefix="steel-bench-pipeline-") as tmp:
        ports = {
            name: free_port()
            for name in ("kafka", "postgres", "redis", "triton_http", "triton_grpc", "triton_metrics")
        }
        settings = Settings(
            run_dir=Path(tmp),
            kafka_url=None,
            postgres_url=None,
            redis_url=None,
            triton_url=None,
            **{f"{name}_port": port for name, port in ports.items()},
        )
        env = {k: v for k, v in os.environ.items() if not (k.startswith("STEEL_") and k.endswith("_URL"))}
        env.update({f"STEEL_{name.upper()}_PORT": str(port) for name, port in ports.items()})
        env.update({"STEEL_RUN_DIR": tmp, "OMP_NUM_THREADS": "1"})
        print(f"starting the embedded stack (Triton serving {settings.triton_repository}) ...", flush=True)
        stack = EmbeddedStack(settings)
        up = stack.up(timeout_s=300)
        if not up.ok:
            for name, exc in up.failures.items():
                print(f"steel bench pipeline: {name}: {exc}", file=sys.stderr)
            return exit_codes.UNAVAILABLE
        camera_s = camera_seconds()
        print(f"the bench's synthetic cameras take {1000 * camera_s:.1f} ms per frame", flush=True)
        config: dict[str, Any] = {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "camera_s_per_frame": camera_s,
            "triton_repository": str(settings.triton_repository),
            "load_average_before": os.getloadavg(),
        }
        try:
            upgrade(postgres_url(settings))
            engine = create_db_engine(postgres_url(settings))
            results = []
            for workers in counts:
                alone: dict[str, Any] = {}
                for ahead in (True, False) if args.compare_infer_ahead else (True,):
                    print(f"case: {workers} worker(s), infer ahead {'on' if ahead else 'off'}", flush=True)
                    row = pipeline_case(workers, args, env, settings, engine, camera_s, infer_ahead=ahead)
                    alone = alone or ensemble_alone(settings, workers, args)
                    row.update(alone)
                    row["pipeline_vs_ensemble"] = row["backlog_frames_per_s"] / row["ensemble_frames_per_s"]
                    results.append(row)
            engine.dispose()
        finally:
            stack.down()
    config["load_average_after"] = os.getloadavg()
    print_results(results)
    path = report.write_results(NAME, results, config, args.json)
    if not args.no_plot:
        plot_results(results, path)
    print(f"results: {path}")
    return exit_codes.OK


# --- the pipeline ------------------------------------------------------------------------------------
def pipeline_case(
    workers: int,
    args: argparse.Namespace,
    env: Mapping[str, str],
    settings: Any,
    engine: Any,
    camera_s: float,
    *,
    infer_ahead: bool = True,
) -> dict[str, Any]:
    tag = f"w{workers}{'' if infer_ahead else 'n'}-{uuid.uuid4().hex[:6]}"
    case_env = {
        **env,
        "STEEL_FRAMES_TOPIC": f"bench.{tag}.frames",
        "STEEL_TRUTH_TOPIC": f"bench.{tag}.truth",
        "STEEL_DEAD_LETTER_TOPIC": f"bench.{tag}.dead-letter",
        "STEEL_CONSUMER_GROUP": f"bench-{tag}",
        "STEEL_ALARM_STREAM": f"steel:bench:{tag}",
        "STEEL_ALARM_CHANNEL": f"steel:bench:{tag}:live",
        # Every detection raises an alarm, so camera-to-alarm is measured on every defective frame.
        "STEEL_ALARM_MIN_PROBABILITY": "[0, 0, 0, 0]",
        "STEEL_ALARM_MIN_AREA_PX": "[1, 1, 1, 1]",
    }
    backlog_line, steady_line = (f"{kind}{workers}{'' if infer_ahead else 'n'}" for kind in "BS")
    half = args.frames // 2
    _steel(case_env, "produce", "--line", backlog_line, "--camera", "c1", "--camera", "c2", "--burst",
           "--frames", str(half))  # fmt: skip
    ports = [_free_port() for _ in range(workers)]
    work = [*STEEL, "work", "--batch-size", str(args.batch_size)]
    work += [] if infer_ahead else ["--no-infer-ahead"]
    procs = [
        subprocess.Popen(
            [*work, "--metrics-port", str(p)],
            env=case_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        _wait_stored(engine, backlog_line, 2 * half, procs)
        backlog = backlog_throughput(engine, backlog_line)
        print(f"  backlog: {backlog:.2f} frames/s", flush=True)
        rate, with_own_cameras = steady_rate(args, backlog, camera_s)
        per_camera = round(args.steady_s * rate / 2)
        began = time.monotonic()
        _steel(case_env, "produce", "--line", steady_line, "--camera", "c1", "--camera", "c2", "--fps",
               f"{rate / 2:.4f}", "--frames", str(per_camera))  # fmt: skip
        _wait_stored(engine, steady_line, 2 * per_camera, procs)
        elapsed = time.monotonic() - began
        steady = steady_latencies(engine, steady_line, settings, case_env["STEEL_ALARM_STREAM"])
        stages = scrape_stages([f"http://127.0.0.1:{p}/metrics" for p in ports])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    frames = 2 * half + 2 * per_camera
    stored = latency_pair(steady["camera_to_stored_ms"])
    print(f"  steady: offered {rate:.2f} frames/s, camera->stored {stored} ms")
    return {
        "workers": workers,
        "infer_ahead": infer_ahead,
        "backlog_frames": 2 * half,
        "backlog_frames_per_s": backlog,
        "served_with_cameras_frames_per_s": with_own_cameras,
        "steady_offered_frames_per_s": rate,
        "steady_frames": 2 * per_camera,
        "steady_achieved_frames_per_s": 2 * per_camera / elapsed,
        **steady,
        "stage_ms_per_frame": {s: 1000 * stages[s]["sum"] / frames for s in STAGES if s in stages},
        "stage_ms_per_batch": {
            s: 1000 * stages[s]["sum"] / stages[s]["count"] for s in STAGES if stages.get(s, {}).get("count")
        },
    }


def steady_rate(args: argparse.Namespace, backlog: float, camera_s: float) -> tuple[float, float]:
    """(frames/s to offer, what the machine serves with the bench's cameras running): --steady-fps
    when given, else --steady-fraction of the backlog throughput less the cameras' time per frame."""
    with_own_cameras = with_cameras(Capacity(backlog, "backlog"), camera_s).frames_per_s
    return args.steady_fps or args.steady_fraction * with_own_cameras, with_own_cameras


def backlog_throughput(engine: Any, line: str) -> float:
    """Frames stored after the first batch / time from the first to the last batch's stored_at."""
    from steelcore.postgres.line_reads import stored_times

    stamps = stored_times(engine, line)
    first, last = min(stamps), max(stamps)
    after_first = sum(1 for t in stamps if t > first)
    span = (last - first).total_seconds()
    if span <= 0:
        raise RuntimeError(f"the backlog of line {line} was stored in one batch; use a larger --frames")
    return after_first / span


def steady_latencies(engine: Any, line: str, settings: Any, stream: str) -> dict[str, Any]:
    from stack.demo_summary import percentiles
    from steelcore.postgres.line_reads import frame_stamps
    from steelcore.redis.connection import redis_client
    from steelcore.redis.entries import all_entries

    rows = frame_stamps(engine, line)
    stored_ms = [(s - c).total_seconds() * 1000 for c, _, s in rows]
    kafka_ms = [(r - c).total_seconds() * 1000 for c, r, _ in rows]
    client = redis_client(settings)
    try:
        alarm_ms = []
        for entry_id, fields in all_entries(client, stream):
            if fields.get("line_id", "") != line:
                continue
            captured = datetime.fromisoformat(fields["captured_at"])
            alarm_ms.append(int(entry_id.split("-")[0]) - captured.timestamp() * 1000)
    finally:
        client.close()
    return {
        "camera_to_stored_ms": percentiles(stored_ms),
        "camera_to_alarm_ms": percentiles(alarm_ms),
        "kafka_wait_ms": percentiles(kafka_ms),
    }


def scrape_stages(urls: Sequence[str]) -> dict[str, dict[str, float]]:
    from steelcore.worker_metrics import STAGE_SECONDS, parse_metrics

    out: dict[str, dict[str, float]] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as response:
            values = parse_metrics(response.read().decode())
        for stage in STAGES:
            for kind in ("sum", "count"):
                key = f'{STAGE_SECONDS}_{kind}{{stage="{stage}"}}'
                out.setdefault(stage, {"sum": 0.0, "count": 0.0})[kind] += values.get(key, 0.0)
    return out


# --- helpers ---------------------------------------------------------------------------------------
def _steel(env: Mapping[str, str], *args: str) -> None:
    done = subprocess.run([*STEEL, *args], env=dict(env), capture_output=True, text=True, timeout=WAIT_S)
    if done.returncode != 0:
        raise RuntimeError(f"steel {' '.join(args[:1])} failed ({done.returncode}): {done.stderr[-800:]}")


def _free_port() -> int:
    from stack.service import free_port

    return free_port()


def _wait_stored(engine: Any, line: str, expected: int, procs: Sequence[subprocess.Popen]) -> None:
    from steelcore.postgres.line_reads import frame_count

    deadline = time.monotonic() + WAIT_S
    while True:
        stored = frame_count(engine, line)
        if stored >= expected:
            return
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(
                f"a worker exited ({dead}) with {stored} of {expected} frames of {line} stored"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stored} of {expected} frames of line {line} stored after {WAIT_S:.0f} s")
        time.sleep(0.5)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="steel bench pipeline")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
