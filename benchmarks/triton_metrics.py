"""Triton's metrics endpoint read around a bench case: each model's time split into queue and compute."""

from __future__ import annotations

import urllib.request
from typing import Any

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
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        metric, rest = line.split("{", 1)
        if metric not in wanted or 'model="' not in rest:
            continue
        model = rest.split('model="', 1)[1].split('"', 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        per_model = values.setdefault(model, {})
        per_model[wanted[metric]] = per_model.get(wanted[metric], 0.0) + value
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
