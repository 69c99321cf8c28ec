"""`steel bench broker`: embedded broker memory over a compressed run, with and without topic rotation.

Each case starts its own Tansu broker, publishes synthetic camera frames (JPEG, with their truth
messages) at a fixed rate while a worker of the group consumes and commits them, and samples the
broker's resident memory (stack.kafka_broker.broker_rss_bytes) as it goes. The worker is the real
InferenceWorker (subscription, janitor, commits) with inference and storage stubbed out: the
broker is what is measured, and stubs keep the consumer ahead of the publishers on a small machine.

    python -m benchmarks.broker_bench --minutes 3 --fps 30 --rotation 10

Results: bench-results/broker.json, a table (peak and final RSS, growth per minute, the ratio) and
bench-results/broker.png (RSS over time, one line per case).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from steelcore import exit_codes

NAME = "broker"
MB = 1024 * 1024
log = logging.getLogger(__name__)


# --- stand-ins for the model and the stores -------------------------------------------------------
class BlankInference:
    """Answers 'no defect' for every frame at once."""

    def infer_async(self, frames: np.ndarray) -> Future[Any]:
        from steelcore.triton.inference_result import EnsembleResult

        n = len(frames)
        future: Future[Any] = Future()
        future.set_result(
            EnsembleResult(np.zeros((n, 4), np.float32), np.zeros((n, 4), np.int64), [[""] * 4] * n)
        )
        return future

    def close(self) -> None:
        pass


class NullStore:
    def write_batch(self, batch: Sequence[Any]) -> Any:
        from steelcore.postgres.frame_records import StoreResult

        return StoreResult(tuple(sorted(r.frame_id for r in batch)))

    def mark_published(self, published: Sequence[tuple[str, int, str]]) -> int:
        return len(published)

    def close(self) -> None:
        pass


class NullAlarms:
    def publish(self, alarms: Sequence[Any]) -> list[str]:
        return [f"0-{i}" for i in range(len(alarms))]


class CyclingSource:
    """A camera replaying a few pre-rendered synthetic frames (rendering is not what is measured)."""

    def __init__(self, spec: Any, frames: Sequence[Any]) -> None:
        self.spec, self._frames = spec, list(frames)

    @property
    def count(self) -> int | None:
        return None

    def frame(self, index: int) -> Any:
        from producers.frame_sources import SourceFrame

        f = self._frames[index % len(self._frames)]
        return SourceFrame(index, f.pixels, f.truth, f.source_ref)


# --- one case -------------------------------------------------------------------------------------
def run_case(
    label: str, rotation_s: float, args: argparse.Namespace, frames: Sequence[Any]
) -> dict[str, Any]:
    from producers.camera_producer import CameraProducer, publish_run
    from producers.frame_sources import CameraSpec, LineGeometry
    from stack.embedded_stack import service_record
    from stack.kafka_broker import KafkaBroker, broker_rss_bytes
    from stack.service import free_port
    from steelcore.service_urls import write_stack
    from steelcore.settings import Settings
    from workers.worker_config import WorkerConfig
    from workers.worker_loop import InferenceWorker

    with tempfile.TemporaryDirectory(prefix="steel-bench-broker-") as tmp:
        run_dir = Path(tmp)
        broker = KafkaBroker(run_dir, free_port())
        broker.start(timeout_s=30)
        write_stack(run_dir, {"kafka": service_record(broker)})
        try:
            settings = Settings(
                run_dir=run_dir,
                kafka_url=None,
                topic_rotation_s=rotation_s,
                frames_partitions=2,
                topic_janitor_interval_s=args.janitor_interval,
                topic_close_grace_s=args.grace,
            )
            worker = InferenceWorker(
                settings,
                WorkerConfig(batch_size=16, batch_wait_s=0.05),
                inference=BlankInference(),
                store=NullStore(),
                alarm_publisher=NullAlarms(),
            )
            worker_thread = threading.Thread(target=worker.run, name="worker", daemon=True)
            worker_thread.start()
            producer = CameraProducer(settings)
            start = datetime.now(UTC)
            geometry = LineGeometry(args.fps / args.cameras, 1.0, 500.0)
            sources = [
                CyclingSource(CameraSpec("LB", f"cam{k}", geometry, start), frames)
                for k in range(args.cameras)
            ]
            stop = threading.Event()
            total = round(args.minutes * 60 * args.fps / args.cameras)
            publisher = threading.Thread(
                target=publish_run,
                args=(producer, sources),
                kwargs={"frames": total, "stop": stop},
                name="publisher",
                daemon=True,
            )
            began = time.monotonic()
            publisher.start()
            samples = []
            while publisher.is_alive():
                publisher.join(args.sample_s)
                samples.append(_sample(began, broker_rss_bytes(run_dir), producer, worker))
                print(
                    f"  {label}: {samples[-1]['t_s']:6.0f} s  RSS {samples[-1]['rss_mb']:7.1f} MB  "
                    f"published {samples[-1]['published_mb']:7.1f} MB  consumed {samples[-1]['consumed']}",
                    flush=True,
                )
            stop.set()
            worker.stop_event.set()
            worker_thread.join(60)
        finally:
            broker.stop()
    rss = [s["rss_mb"] for s in samples]
    half = len(samples) // 2
    # Growth over the second half: the first buckets fill before any is deleted.
    late = samples[half:]
    growth = (late[-1]["rss_mb"] - late[0]["rss_mb"]) / max(1e-9, (late[-1]["t_s"] - late[0]["t_s"]) / 60)
    return {
        "case": label,
        "rotation_s": rotation_s,
        "fps": args.fps,
        "minutes": args.minutes,
        "frames_published": producer.stats.frames_delivered,
        "published_mb": samples[-1]["published_mb"],
        "consumed": samples[-1]["consumed"],
        "peak_rss_mb": max(rss),
        "final_rss_mb": rss[-1],
        "growth_mb_per_min_second_half": growth,
        "samples": samples,
    }


def _sample(began: float, rss: int | None, producer: Any, worker: Any) -> dict[str, Any]:
    from steelcore.worker_metrics import FRAMES_TOTAL

    stats = producer.stats
    return {
        "t_s": round(time.monotonic() - began, 1),
        "rss_mb": (rss or 0) / MB,
        "published_mb": stats.bytes_sent / MB,
        "frames_published": stats.frames_delivered,
        "consumed": int(worker.metrics.value(FRAMES_TOTAL, {"outcome": "stored"})),
    }


# --- the run --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=3.0, help="publishing time per case (default 3)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames/s over all cameras (default 30)")
    parser.add_argument("--cameras", type=int, default=2, help="cameras publishing (default 2)")
    parser.add_argument("--rotation", type=float, default=10.0, help="bucket seconds of the rotating case")
    parser.add_argument("--janitor-interval", type=float, default=2.0, help="janitor check period, s")
    parser.add_argument(
        "--grace", type=float, default=2.0, help="bucket close grace, s (compressed from the default)"
    )
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period, s (default 5)")
    report.add_output_arguments(parser, "broker")


def run(args: argparse.Namespace) -> int:
    from producers.frame_sources import SourceFrame
    from producers.synthetic_camera import SyntheticCamera
    from steelcore import rle

    if min(args.minutes, args.fps, args.rotation, args.grace, args.janitor_interval) <= 0 or args.cameras < 1:
        raise ValueError(
            "--minutes, --fps, --rotation, --grace, --janitor-interval must be > 0, --cameras >= 1"
        )
    camera = SyntheticCamera(seed=0)
    frames = [
        SourceFrame(i, s.image, tuple(rle.encode_stack(s.masks)), s.image_id)
        for i, s in ((i, camera.frame(i)) for i in range(16))
    ]
    results = []
    for label, rotation in (("one topic", 0.0), (f"rotation {args.rotation:g} s", args.rotation)):
        print(f"case: {label}", flush=True)
        results.append(run_case(label, rotation, args, frames))
    flat, rotating = results
    # How many times less memory the rotating broker peaked at (> 1: rotation uses less).
    rotating["peak_rss_one_topic_over_rotation"] = report.ratio(flat["peak_rss_mb"], rotating["peak_rss_mb"])
    config = {k: v for k, v in vars(args).items() if k not in ("json",)}
    keys = ("case", "frames_published", "published_mb", "consumed", "peak_rss_mb", "final_rss_mb")
    rows = [[r[k] for k in keys] + [r["growth_mb_per_min_second_half"]] for r in results]
    report.print_table(
        ["case", "frames", "published MB", "consumed", "peak RSS MB", "final RSS MB", "MB/min (2nd half)"],
        rows,
        title=f"embedded broker RSS, {args.fps:g} frames/s for {args.minutes:g} min per case",
    )
    print(f"peak RSS, one topic / rotation: {rotating['peak_rss_one_topic_over_rotation']:.1f}x")
    path = report.write_results(NAME, results, config, args.json)
    if not args.no_plot:
        _plot(results, path.with_suffix(".png"))
    print(f"results: {path}")
    return exit_codes.OK


def _plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot([s["t_s"] for s in r["samples"]], [s["rss_mb"] for s in r["samples"]], label=r["case"])
    ax.set_xlabel("seconds of publishing")
    ax.set_ylabel("broker RSS (MB)")
    ax.set_title("Embedded broker memory: one topic vs rotating buckets")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.broker_bench", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
