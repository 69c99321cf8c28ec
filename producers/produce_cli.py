"""`steel produce`: publish synthetic or replayed camera frames to Kafka.

    steel produce --line L1 --camera top --camera bottom --fps 2 --speed 1.5 --frames 100
    steel produce --replay /work/shared/data/severstal_sample --camera top --burst

With topic rotation (on by default for the embedded broker) frames and truth go to time-bucketed
topics (steelcore.kafka.topic_rotation). Ctrl-C or SIGTERM stops at the next frame; everything already
sent is flushed and accounted for. Exit 0 when every frame (and truth message) was delivered, 1 if
any was not.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from steelcore import exit_codes
from steelcore.frame_message import ENCODINGS
from steelcore.settings import get_settings

log = logging.getLogger("steel.produce")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings = get_settings()
    parser.add_argument("--line", default="L1", help="line id (default L1)")
    parser.add_argument(
        "--camera", action="append", default=None, help="camera id; repeat for several cameras (default cam1)"
    )
    parser.add_argument(
        "--fps", type=float, default=settings.camera_fps, help="frames/s per camera (default %(default)s)"
    )
    parser.add_argument(
        "--speed", type=float, default=settings.line_speed_m_s, help="strip m/s (default %(default)s)"
    )
    parser.add_argument(
        "--coil-length", type=float, default=settings.coil_length_m, help="coil m (default %(default)s)"
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="frames per camera (default: endless; one pass for --replay)"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic camera seed; camera k uses seed+k")
    parser.add_argument(
        "--replay", type=Path, default=None, help="replay a folder of images or a Kaggle dataset"
    )
    parser.add_argument("--encoding", choices=ENCODINGS, default="jpeg", help="image encoding (default jpeg)")
    parser.add_argument(
        "--partitions", type=int, default=None, help="partitions of topics created now (default: settings)"
    )
    parser.add_argument(
        "--burst", action="store_true", help="publish as fast as possible instead of on the fps schedule"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the delivery summary as JSON here")
    parser.add_argument(
        "--gain", type=float, default=1.0, help="multiply the pixels by this (a dimmer lamp: < 1; default 1)"
    )
    parser.add_argument("--offset", type=float, default=0.0, help="add this many gray levels (default 0)")
    parser.add_argument(
        "--change-after",
        type=int,
        default=0,
        help="apply --gain/--offset from this frame index on (default 0)",
    )
    parser.add_argument(
        "--change-until", type=int, default=None, help="... and up to this frame index (default: for good)"
    )


def build_sources(args: argparse.Namespace, run_start: datetime) -> list:
    """One frame source per camera; ValueError for bad options or an unusable replay folder."""
    from producers.frame_sources import (
        CameraSpec,
        GainChange,
        LineGeometry,
        ReplaySource,
        SyntheticSource,
        discover_replay,
    )

    if args.frames is not None and args.frames < 0:
        raise ValueError(f"--frames must be >= 0, got {args.frames}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    cameras = args.camera or ["cam1"]
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"--camera ids must be distinct, got {cameras}")
    geometry = LineGeometry(fps=args.fps, speed_m_s=args.speed, coil_length_m=args.coil_length)
    specs = [CameraSpec(args.line, camera, geometry, run_start) for camera in cameras]
    if args.replay is not None:
        items = discover_replay(args.replay)
        sources = [ReplaySource(spec, items) for spec in specs]
    else:
        sources = [SyntheticSource(spec, args.seed + k) for k, spec in enumerate(specs)]
    if args.gain == 1.0 and args.offset == 0.0:
        return sources
    change = {
        "gain": args.gain,
        "offset": args.offset,
        "after": args.change_after,
        "until": args.change_until,
    }
    return [GainChange(source, **change) for source in sources]


def run(args: argparse.Namespace) -> int:
    from producers.camera_producer import CameraProducer, publish_run
    from steelcore.kafka.clients import new_admin
    from steelcore.kafka.exceptions import KafkaException
    from steelcore.kafka.topic_admin import ensure_topics
    from steelcore.kafka.topic_rotation import rotation_seconds
    from steelcore.service_urls import ServiceUnavailableError
    from steelcore.settings import get_settings

    settings = get_settings()
    run_start = datetime.now(UTC)
    try:
        sources = build_sources(args, run_start)
    except ValueError as exc:
        print(f"steel produce: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    partitions = args.partitions if args.partitions is not None else settings.frames_partitions
    if partitions < 1:
        print(f"steel produce: --partitions must be >= 1, got {partitions}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    try:
        if rotation_seconds(settings) == 0:
            admin = new_admin(settings)
            ensure_topics(admin, [settings.frames_topic, settings.truth_topic], partitions)
        # With rotation the producer creates each bucket topic (and the next) before using it.
        producer = CameraProducer(settings, encoding=args.encoding, partitions=partitions)
    except (ServiceUnavailableError, KafkaException, TimeoutError) as exc:
        print(f"steel produce: Kafka unavailable: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping after the current frame", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    from tqdm import tqdm

    total = args.frames if args.frames is not None else sources[0].count
    progress = tqdm(total=total, unit="frame", desc=f"{args.line} x{len(sources)} cameras", disable=None)
    rotation = f", {producer.router.rotation_s:g} s buckets" if producer.router.rotating else ""
    log.info(
        "publishing %s camera(s) of line %s to %s%s (%s, %s)",
        len(sources), args.line, settings.frames_topic, rotation, args.encoding,
        "burst" if args.burst else f"{args.fps:g} fps",
    )  # fmt: skip
    try:
        result = publish_run(
            producer,
            sources,
            frames=args.frames,
            stop=stop,
            realtime=not args.burst,
            on_frame=lambda _: progress.update(1),
        )
    except ValueError as exc:
        producer.flush()
        print(f"steel produce: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    finally:
        progress.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    summary = {
        "line_id": args.line,
        "cameras": [s.spec.camera_id for s in sources],
        "run_start": run_start.isoformat(),
        "frames_per_camera": result.frames,
        "late_frames": result.late_frames,
        "elapsed_s": round(result.elapsed_s, 3),
        "topic": settings.frames_topic,
        "truth_topic": settings.truth_topic,
        "rotation_s": producer.router.rotation_s,
        "topics_written": sorted(producer.router.used),
        "delivery": result.stats.to_json(),
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    stats = result.stats
    print(
        f"published {stats.frames_sent} frames ({stats.frames_delivered} delivered, {stats.frames_failed} "
        f"failed, {stats.pending} pending) and {stats.truth_delivered}/{stats.truth_sent} truth messages "
        f"in {result.elapsed_s:.1f} s; {result.late_frames} late"
    )
    if not stats.ok:
        print(f"steel produce: not every message was delivered: {stats.first_error}", file=sys.stderr)
        return exit_codes.FAILURE
    return exit_codes.OK
