"""The worker's metrics as their readers see them: names, label values, and the parser of a scrape.

The worker registers them (workers/worker_metrics.py); the dashboard, the demo summary, the
benches and the tests read them from a /metrics page and need only this module, not the worker.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

OUTCOMES = ("stored", "duplicate", "dead_lettered")
# What became of a frame offered to the shadow version (workers.shadow_runner).
SHADOW_OUTCOMES = ("stored", "duplicate", "dropped", "failed")
STAGES = ("decode", "infer", "dead_letter", "store", "alarm", "outbox", "commit", "relay", "trim")

# The metrics other code reads (the dashboard, the demo summary, the benches, the tests). A scrape
# shows a counter as its name plus "_total" and a histogram as its name plus "_sum"/"_count"/"_bucket".
FRAMES = "steel_worker_frames"
ERRORS = "steel_worker_errors"
ALARMS_PUBLISHED = "steel_worker_alarms_published"
STAGE_SECONDS = "steel_worker_stage_seconds"
OVERLOAD_EPISODES = "steel_worker_overload_episodes"
PAUSED = "steel_worker_paused"
EVENT_LAG_SECONDS = "steel_worker_event_lag_seconds"
BATCH_LIMIT = "steel_worker_batch_limit"
FRAME_LATENCY_SECONDS = "steel_worker_frame_latency_seconds"
LATENCY_TARGET_SECONDS = "steel_worker_latency_target_seconds"
OVERLOADED = "steel_worker_overloaded"
FRAMES_TOTAL = FRAMES + "_total"
ERRORS_TOTAL = ERRORS + "_total"
ALARMS_PUBLISHED_TOTAL = ALARMS_PUBLISHED + "_total"
OVERLOAD_EPISODES_TOTAL = OVERLOAD_EPISODES + "_total"
STAGE_SECONDS_SUM = STAGE_SECONDS + "_sum"
STAGE_SECONDS_COUNT = STAGE_SECONDS + "_count"


def metric_samples(text: str, *, skip_broken: bool = False) -> list[Sample]:
    """The samples of a Prometheus text page, read by prometheus_client's parser. ``skip_broken``
    leaves out a line the parser refuses (a page cut short) instead of failing the whole page."""
    if not skip_broken:
        return [s for family in text_string_to_metric_families(text) for s in family.samples]
    samples: list[Sample] = []
    # Line by line so one bad line costs only itself; a sample's name does not depend on its TYPE line.
    for line in text.splitlines():
        try:
            samples.extend(s for family in text_string_to_metric_families(line) for s in family.samples)
        except ValueError:
            continue
    return samples


def sample_key(sample: Sample, *, quoted: bool = True) -> str:
    """``name{label="value",...}`` as the page writes it, or ``name{label=value,...}`` sorted by label
    (the dashboard's form) when not ``quoted``; the bare name for a sample without labels."""
    if not sample.labels:
        return sample.name
    if quoted:
        labels: Iterable[str] = (f'{k}="{v}"' for k, v in sample.labels.items())
    else:
        labels = (f"{k}={v}" for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{','.join(labels)}}}"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{label="value",...}': value}; lines the parser refuses are skipped."""
    return {sample_key(s): s.value for s in metric_samples(text, skip_broken=True)}
