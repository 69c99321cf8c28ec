"""`steel produce` as a process against the embedded Kafka: topics, delivery accounting, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from line_probes import read_topic

from steelcore.frame_message import decode_frame
from steelcore.kafka.client_config import admin_config
from steelcore.paths import SEVERSTAL_SAMPLE_DIR
from steelcore.settings import Settings

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def topics(stack_settings: Settings, kafka_url: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return stack_settings.model_copy(
        update={"frames_topic": f"frames-{tag}", "truth_topic": f"truth-{tag}", "topic_rotation_s": 0}
    )


def produce(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "STEEL_RUN_DIR": str(settings.run_dir),
        "STEEL_FRAMES_TOPIC": settings.frames_topic,
        "STEEL_TRUTH_TOPIC": settings.truth_topic,
        "STEEL_TOPIC_ROTATION_S": str(settings.topic_rotation_s),
    }
    env.pop("STEEL_KAFKA_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "steelcore.cli", "produce", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_synthetic_cameras_publish_keyed_frames_and_truth(topics: Settings, tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient

    summary_path = tmp_path / "summary.json"
    proc = produce(
        topics, "--line", "L3", "--camera", "a", "--camera", "b", "--fps", "20", "--frames", "3",
        "--partitions", "3", "--json", str(summary_path),
    )  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    assert summary["frames_per_camera"] == 3
    assert summary["delivery"]["frames_delivered"] == 6 and summary["delivery"]["truth_delivered"] == 6
    metadata = AdminClient(admin_config(topics)).list_topics(timeout=10).topics
    assert len(metadata[topics.frames_topic].partitions) == 3
    frames = read_topic(topics, topics.frames_topic, 6)
    headers = [decode_frame(m.value()).header for m in frames]
    assert sorted(h.frame_id[-8:] + h.camera_id for h in headers) == sorted(
        f"{i:08d}{c}" for i in range(3) for c in "ab"
    )
    partitions: dict[str, set[int]] = {}
    for message, header in zip(frames, headers, strict=True):
        assert message.key() == header.camera_id.encode() and header.encoding == "jpeg"
        partitions.setdefault(header.camera_id, set()).add(message.partition())
    assert all(len(p) == 1 for p in partitions.values())  # a camera's frames stay in one partition


def test_replay_of_the_kaggle_sample_publishes_its_labels_as_truth(topics: Settings) -> None:
    proc = produce(topics, "--replay", str(SEVERSTAL_SAMPLE_DIR), "--burst", "--camera", "r1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    images = sorted((SEVERSTAL_SAMPLE_DIR / "images").iterdir())
    truth = read_topic(topics, topics.truth_topic, len(images))
    assert sorted(json.loads(m.value())["source_ref"] for m in truth) == [p.name for p in images]
    assert f"published {len(images)} frames ({len(images)} delivered" in out


def test_ctrl_c_stops_an_endless_run_with_everything_delivered(topics: Settings, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    from confluent_kafka.admin import AdminClient

    proc = produce(topics, "--fps", "4", "--json", str(summary_path))
    admin = AdminClient(admin_config(topics))
    deadline = time.monotonic() + 60
    while topics.frames_topic not in admin.list_topics(timeout=10).topics:  # created before the first frame
        assert time.monotonic() < deadline and proc.poll() is None, "the producer did not start"
        time.sleep(0.2)
    time.sleep(2.0)  # about 8 frames at 4 fps
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    delivery = summary["delivery"]
    assert delivery["frames_sent"] >= 2 and delivery["frames_delivered"] == delivery["frames_sent"]
    assert delivery["pending"] == 0
    assert len(read_topic(topics, topics.frames_topic, delivery["frames_sent"])) == delivery["frames_sent"]


def test_bad_options_exit_with_bad_input(topics: Settings, tmp_path: Path) -> None:
    proc = produce(topics, "--fps", "0", "--frames", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "fps must be a positive finite number" in err
    proc = produce(topics, "--replay", str(tmp_path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "no images" in err


def test_with_rotation_frames_go_to_time_buckets_created_with_the_partitions_asked(
    topics: Settings, tmp_path: Path
) -> None:
    from confluent_kafka.admin import AdminClient

    from steelcore.kafka.topic_rotation import bucket_number, subscription_pattern

    rotating = topics.model_copy(update={"topic_rotation_s": 1.0})
    summary_path = tmp_path / "summary.json"
    began = time.time()
    proc = produce(rotating, "--fps", "4", "--frames", "8", "--partitions", "3", "--json", str(summary_path))
    _, err = proc.communicate(timeout=120)
    ended = time.time()
    assert proc.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    assert summary["rotation_s"] == 1.0 and summary["delivery"]["frames_delivered"] == 8
    written = [
        b for t in summary["topics_written"] if (b := bucket_number(topics.frames_topic, t)) is not None
    ]
    assert len(written) >= 2 and all(int(began) - 1 <= b <= int(ended) for b in written)
    listed = AdminClient(admin_config(topics)).list_topics(timeout=10).topics
    assert topics.frames_topic not in listed  # nothing goes to the un-bucketed topic
    assert all(len(listed[f"{topics.frames_topic}.{b}"].partitions) == 3 for b in written)
    frames = read_topic(topics, subscription_pattern(topics.frames_topic, min(written)), 8)
    assert sorted(decode_frame(m.value()).header.frame_id[-8:] for m in frames) == [
        f"{i:08d}" for i in range(8)
    ]
    assert {bucket_number(topics.frames_topic, m.topic()) for m in frames} == set(written)
