"""`steel models`: the shipped model bundles, their classes and their last evaluation.

Reads only model.json and metrics.json (no weights), so listing is instant; a bundle whose JSON
is broken is listed with its error rather than hiding the others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from steelcore import exit_codes


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def describe_bundle(path: Path) -> dict[str, Any]:
    """Name, description, classes and metrics summary of one bundle folder."""
    from steelcore.model_bundle import METRICS_JSON, MODEL_JSON

    entry: dict[str, Any] = {"name": path.name, "path": str(path)}
    try:
        meta = _read(path / MODEL_JSON)
        entry.update(
            name=meta.get("name", path.name),
            description=meta.get("description", ""),
            classes={str(k): v for k, v in meta.get("class_names", {}).items()},
            classifier=bool(meta.get("classifier")),
            created=(meta.get("provenance") or {}).get("created"),
        )
        metrics_path = path / METRICS_JSON
        if metrics_path.is_file():
            metrics = _read(metrics_path)
            entry["metrics"] = {
                **metrics.get("summary", {}),
                "images": metrics.get("images"),
                "split": (metrics.get("data") or {}).get("split"),
                "data": (metrics.get("data") or {}).get("path"),
            }
        else:
            entry["metrics"] = None
    except (OSError, ValueError, AttributeError) as exc:
        entry["error"] = f"unreadable bundle: {exc}"
    return entry


def list_models() -> list[dict[str, Any]]:
    from steelcore.model_bundle import list_bundles

    return [describe_bundle(p) for p in list_bundles()]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_models(entries: list[dict[str, Any]]) -> str:
    if not entries:
        from steelcore.model_bundle import models_dir

        return f"no model bundles in {models_dir()}"
    lines = [f"{'name':<16} {'mean Dice':>9} {'mIoU':>7} {'eval data':<28} classes / description"]
    for e in entries:
        if "error" in e:
            lines.append(f"{e['name']:<16} {e['error']}")
            continue
        m = e["metrics"] or {}
        data = (
            f"{Path(m['data']).name} {m.get('split')} ({m.get('images')})"
            if m.get("data")
            else "not evaluated"
        )
        classes = ", ".join(f"{k} {v}" for k, v in e["classes"].items())
        lines.append(
            f"{e['name']:<16} {_num(m.get('mean_dice')):>9} {_num(m.get('miou')):>7} {data:<28} {classes}"
        )
        lines.append(f"{'':<16} {e['description']}" + ("" if e["classifier"] else " (no classifier gate)"))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    entries = list_models()
    print(json.dumps(entries, indent=2) if args.json else format_models(entries))
    return exit_codes.BAD_INPUT if any("error" in e for e in entries) else exit_codes.OK
