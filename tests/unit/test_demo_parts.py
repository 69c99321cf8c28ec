"""`steel demo` pieces that need no services: options, the frame split, Dice per
frame, the truth reader's filtering (fake consumer) and the actuator journal reading."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stack.demo import add_arguments, check_arguments
from stack.demo_start import frames_per_camera
from stack.demo_summary import LiveSummary, frame_dice, percentiles
from stack.demo_truth import TruthReader
from steelcore import rle
from steelcore.settings import Settings

T0 = datetime(2025, 5, 1, 6, 0, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_frames_are_split_over_cameras_without_loss() -> None:
    assert frames_per_camera(40, 2) == [20, 20]
    assert frames_per_camera(7, 3) == [3, 2, 2]
    assert sum(frames_per_camera(41, 4)) == 41


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--frames", "0"), "--frames must be >= 1"),
        (("--workers", "0"), "--cameras and --workers must be >= 1"),
        (("--frames", "1", "--cameras", "2"), "gives some of the 2 cameras nothing"),
        (("--fps", "0"), "--fps must be a positive number"),
        (("--refresh-s", "nan"), "--refresh-s must be a positive number"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_arguments(parse(*argv))


def test_defaults_follow_settings() -> None:
    args = parse()
    # --fps unset: the demo offers a share of the machine's capacity (stack.demo_capacity).
    assert args.fps is None and args.cameras == 2 and args.workers == 2 and args.frames is None
    check_arguments(args)


def test_percentiles_of_nothing_are_empty() -> None:
    assert percentiles([]) == {"p50": None, "p99": None, "count": 0}
    assert percentiles([10.0, 20.0, 30.0])["p50"] == 20.0


def test_frame_dice_follows_the_kaggle_rule() -> None:
    mask = np.zeros((256, 1600), np.uint8)
    mask[10:20, 10:20] = 1  # 100 px
    half = mask.copy()
    half[10:15, 10:20] = 0  # 50 px inside the truth
    truth = [rle.encode(mask), "", "", rle.encode(mask)]
    predicted = [rle.encode(half), "", rle.encode(mask), ""]
    dice = frame_dice(predicted, truth)
    # class 1: 2*50/(50+100); class 2: empty/empty = 1; class 3: false positive; class 4: missed
    assert dice.tolist() == pytest.approx([100 / 150, 1.0, 0.0, 0.0])


class FakeTruthMessage:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "truth"

    def partition(self) -> int:
        return 0


class FakeTruthConsumer:
    def __init__(self, records: list[Any]) -> None:
        self.pending = [
            FakeTruthMessage(r if isinstance(r, bytes) else json.dumps(r).encode()) for r in records
        ]
        self.subscriptions: list[list[str]] = []
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        self.subscriptions.append(topics)

    def consume(self, num_messages: int, timeout: float) -> list[FakeTruthMessage]:
        out, self.pending = self.pending[:num_messages], self.pending[num_messages:]
        if not out:
            time.sleep(0.01)
        return out

    def close(self) -> None:
        self.closed = True


def test_the_truth_reader_keeps_only_this_runs_frames_and_hands_each_out_once() -> None:
    since = 1_000
    records = [
        {"frame_id": "L1-c1-1000-00000000", "line_id": "L1", "rles": ["1 2", "", "", ""]},
        {"frame_id": "L1-c1-1000-00000000", "line_id": "L1", "rles": ["1 2", "", "", ""]},  # a redelivery
        {"frame_id": "L1-c1-999-00000000", "line_id": "L1", "rles": ["", "", "", ""]},  # an earlier run
        {"frame_id": "L2-c1-1000-00000001", "line_id": "L2", "rles": ["", "", "", ""]},  # another line
        b"not json",
    ]
    consumer = FakeTruthConsumer(records)
    reader = TruthReader(Settings(topic_rotation_s=0, truth_topic="tt"), "L1", since, consumer=consumer)
    reader.start()
    deadline = time.monotonic() + 5
    while consumer.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    reader.stop()
    assert consumer.subscriptions == [["tt"]] and consumer.closed
    assert reader.seen == 1
    assert reader.take(["L1-c1-1000-00000000", "nope"]) == {"L1-c1-1000-00000000": ["1 2", "", "", ""]}
    assert reader.take(["L1-c1-1000-00000000"]) == {}


def test_a_rotating_truth_reader_follows_the_buckets_from_the_previous_one() -> None:
    import re

    consumer = FakeTruthConsumer([])
    reader = TruthReader(Settings(topic_rotation_s=10.0, truth_topic="tt"), "L1", 0, consumer=consumer)
    reader.start()
    reader.stop()
    (pattern,) = consumer.subscriptions[0]
    current = int(time.time() // 10)
    assert re.fullmatch(pattern[1:-1], f"tt.{current - 1}") and not re.fullmatch(
        pattern[1:-1], f"tt.{current - 2}"
    )


def test_the_actuator_journal_counts_this_runs_acts_and_their_latency(tmp_path: Path) -> None:
    journal = tmp_path / "rejects.jsonl"

    def act(line: str, captured: datetime, delay_s: float, alarm: str) -> str:
        return json.dumps(
            {"command": "reject", "acted_at": (captured + timedelta(seconds=delay_s)).timestamp(),
             "line_id": line, "captured_at": captured.isoformat(), "alarm_id": alarm}
        )  # fmt: skip

    second = T0 + timedelta(seconds=1)
    lines = [
        act("L1", second, 0.25, "a1"),
        act("L1", T0 - timedelta(seconds=5), 0.1, "a0"),  # an earlier run
        act("L9", second, 0.1, "a9"),  # another line
        act("L1", second, 0.9, "a1"),  # the same alarm acted on again (at-least-once)
    ]
    journal.write_text("\n".join(lines) + "\n" + act("L1", T0, 0.5, "a2")[:20])
    summary = LiveSummary(
        Settings(), line_id="L1", started=T0, engine=None, redis_client=None, truth=None,  # type: ignore[arg-type]
        metrics_urls=[], journal=journal,
    )  # fmt: skip
    summary._read_journal()
    assert summary._acks == 1 and summary._act_latencies == pytest.approx([250.0])
    with journal.open("a") as fh:  # the half-written line is completed later
        fh.write(act("L1", T0, 0.5, "a2")[20:] + "\n")
    summary._read_journal()
    assert summary._acks == 2 and summary._act_latencies == pytest.approx([250.0, 500.0])


def test_a_child_is_judged_by_its_own_run_of_the_log_only(tmp_path: Path) -> None:
    """Logs are appended run after run: an earlier run's "assigned" must not count as this one's."""
    from stack.demo_children import Child, wait_for_log

    log = tmp_path / "worker-1.log"
    log.write_text("$ steel work\n2026-01-01 INFO steel.worker: assigned steel.frames[0]\n")
    child = Child("worker-1", ["--help"], tmp_path)  # prints usage and exits, never "assigned"
    child.start()
    assert child.wait(60) == 0
    assert wait_for_log([child], "assigned", timeout_s=5) == [child]
    assert wait_for_log([child], "usage: steel", timeout_s=5) == []
    assert "steel.frames[0]" not in child.log_text() and "steel.frames[0]" in log.read_text()
