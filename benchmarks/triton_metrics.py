"""Triton's metrics endpoint read around a bench case: each model's time split into queue and compute."""

from __future__ import annotations

import urllib.request
from typing import Any

from steelcore.worker_metrics import metric_samples

MODELS = ("classifier", "segmenter", "postprocess", "steel_ensemble", "steel_cascade")
METRICS = {
    "requests": "nv_inference_request_success",
    "inferences": "nv_inference_count",
    "executions": "nv_inference_exec_count",
    "queue_us": "nv_inference_queue_duration_us",
    "compute_us": "nv_inference_compute_infer_duration_us",
    "compute_input_us": "nv_inference_compute_input_duration_us",
    "compute_output_us": "nv_inference_compute_output_duration_us",
}


def scrape(metrics_url: str | None) -> dict[str, dict[str, float]]:
    """Per model: the counters of METRICS summed over versions; empty without a metrics URL."""
    if not metrics_url:
        return {}
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    wanted = {metric: key for key, metric in METRICS.items()}
    values: dict[str, dict[str, float]] = {}
    for sample in metric_samples(text, skip_broken=True):
        model = sample.labels.get("model")
        if sample.name not in wanted or model is None:
            continue
        per_model = values.setdefault(model, {})
        key = wanted[sample.name]
        per_model[key] = per_model.get(key, 0.0) + sample.value
    return values


def split_time(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per model during one case: requests, mean batch, mean queue and compute ms per request."""
    split: dict[str, Any] = {}
    for model in MODELS:
        if model not in after:
            continue
        delta = {k: after[model].get(k, 0.0) - before.get(model, {}).get(k, 0.0) for k in METRICS}
        requests = delta["requests"]
        if requests <= 0:
            continue
        compute = delta["compute_us"] + delta["compute_input_us"] + delta["compute_output_us"]
        split[model] = {
            "requests": int(requests),
            "frames": int(delta["inferences"]),
            "mean_batch": delta["inferences"] / delta["executions"] if delta["executions"] else float("nan"),
            "queue_ms_per_request": delta["queue_us"] / requests / 1000,
            "compute_ms_per_request": compute / requests / 1000,
        }
    return split
