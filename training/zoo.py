"""`steel models`: the model bundles, their registered versions and roles, and the lifecycle.

``steel models`` / ``steel models list`` reads only model.json and metrics.json (no weights), so
listing is instant; a bundle whose JSON is broken is listed with its error rather than hiding the
others. Where the database is reachable it adds the registered versions and which one serves
production or shadows it.

``shadow NAME``, ``stop-shadow``, ``promote [NAME]`` and ``rollback`` change what the running
Triton serves (stack.model_lifecycle); they need the database (owner login, STEEL_POSTGRES_URL or
the embedded one) and Triton (STEEL_TRITON_URL or the embedded one).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from steelcore import exit_codes


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def describe_bundle(path: Path) -> dict[str, Any]:
    """Name, description, classes and metrics summary of one bundle folder."""
    from training.model_bundle import METRICS_JSON, MODEL_JSON

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
    from training.model_bundle import list_bundles

    return [describe_bundle(p) for p in list_bundles()]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_models(entries: list[dict[str, Any]]) -> str:
    if not entries:
        from training.model_bundle import models_dir

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


def registry_summary() -> dict[str, Any]:
    """Registered versions and roles, or why they could not be read (never raises)."""
    try:
        from steelcore import service_urls
        from steelcore.postgres.engine import create_db_engine
        from steelcore.postgres.model_registry import read_roles, registered_versions

        engine = create_db_engine(service_urls.postgres_url(), connect_timeout_s=3)
        try:
            with engine.connect() as conn:
                roles = read_roles(conn)
                rows = registered_versions(conn)
        finally:
            engine.dispose()
    except Exception as exc:  # the listing of bundles must not depend on the database
        return {
            "error": f"registry not readable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        }
    versions = []
    for row in rows:
        role = (
            "production"
            if row.version == roles.production
            else "shadow"
            if row.version == roles.shadow
            else ""
        )
        versions.append(
            {
                "version": row.version,
                "bundle": row.bundle,
                "role": role,
                "share": roles.shadow_share if role == "shadow" else None,
                "registered_at": row.registered_at.isoformat(timespec="seconds"),
                "registered_by": row.registered_by,
            }
        )
    return {"versions": versions}


def format_registry(summary: dict[str, Any]) -> str:
    if "error" in summary:
        return summary["error"]
    if not summary["versions"]:
        return "no registered versions yet (the first `steel models shadow|promote` registers production)"
    lines = [f"{'version':>7}  {'bundle':<16} {'role':<18} registered"]
    for v in summary["versions"]:
        role = v["role"] + (f" ({v['share']:.0%})" if v["role"] == "shadow" and v["share"] else "")
        lines.append(
            f"{v['version']:>7}  {v['bundle']:<16} {role:<18} {v['registered_at']} by {v['registered_by']}"
        )
    return "\n".join(lines)


def _actor() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from steelcore.settings import get_settings

    s = get_settings()
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = sub.add_parser("list", help="bundles, registered versions and roles (the default)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    shadow = sub.add_parser(
        "shadow",
        help="serve a bundle beside production on a share of live frames",
        description="Register bundle NAME as the next version, load it beside production on the running "
        "Triton and let the workers send it a share of the frames (answers stored apart, no alarms). "
        "Exit 3: unknown bundle, or input shape / classes unlike production's; exit 1: Triton did not "
        "load it (production untouched) or a shadow already runs; exit 4: a service is unreachable.",
    )
    shadow.add_argument(
        "name", help="bundle folder under models/ (e.g. synthetic, or a `steel retrain` candidate)"
    )
    shadow.add_argument(
        "--share",
        type=float,
        default=s.shadow_share,
        help=f"share of frames, in (0, 1] (default {s.shadow_share})",
    )
    shadow.add_argument("--by", default=None, help="who asks (default $USER), for the audit trail")
    stop = sub.add_parser("stop-shadow", help="end the shadow run and unload its version")
    stop.add_argument("--by", default=None, help="who asks (default $USER)")
    promote = sub.add_parser(
        "promote",
        help="make a bundle (default: the shadow) production",
        description="Switch production to NAME (default: the shadow) without losing or double-judging a "
        "frame. Gate: the candidate's F1 against operator verdicts on shadowed frames must be at least "
        f"production's, on at least STEEL_PROMOTE_GATE_MIN_VERDICTS ({s.promote_gate_min_verdicts}) "
        "verdicts; refused -> exit 1 and nothing changes, unless --force (audited). Exit 3: unknown "
        "bundle or one unlike production.",
    )
    promote.add_argument("name", nargs="?", default=None, help="bundle name (default: the running shadow)")
    promote.add_argument("--force", action="store_true", help="promote even if the gate refuses (audited)")
    promote.add_argument("--by", default=None, help="who asks (default $USER)")
    rollback = sub.add_parser("rollback", help="production back to the version the last switch replaced")
    rollback.add_argument("--by", default=None, help="who asks (default $USER)")


def _lifecycle() -> Any:
    from stack import model_lifecycle
    from stack.lifecycle_errors import DatabaseUnreachable, LifecycleError, TritonUnreachable
    from steelcore import service_urls
    from steelcore.postgres.engine import create_db_engine
    from steelcore.postgres.migrate import upgrade
    from steelcore.settings import get_settings
    from steelcore.triton.model_names import MANIFEST

    settings = get_settings()
    repository = model_lifecycle.serving_repository_path(settings)
    if not (repository / MANIFEST).is_file():
        raise LifecycleError(
            f"no serving repository at {repository}: start Triton with `steel up`, or set "
            "STEEL_TRITON_SERVING_REPOSITORY to the repository the server serves"
        )
    try:
        url = service_urls.postgres_url(settings)
        upgrade(url)  # the registry tables come with revision 0005
        engine = create_db_engine(url)
    except Exception as exc:
        raise DatabaseUnreachable(f"the database cannot be reached: {exc}") from exc
    try:
        triton_url = service_urls.triton_url(settings)
    except Exception as exc:
        raise TritonUnreachable(str(exc)) from exc
    control = model_lifecycle.triton_control(triton_url, settings.triton_protocol)
    return model_lifecycle.Lifecycle(engine, repository, control, settings)


def run_action(args: argparse.Namespace) -> int:
    from stack.lifecycle_errors import LifecycleError

    actor = getattr(args, "by", None) or _actor()
    try:
        life = _lifecycle()
        try:
            if args.action == "shadow":
                life.shadow(args.name, args.share, actor)
            elif args.action == "stop-shadow":
                life.stop_shadow(actor)
            elif args.action == "promote":
                life.promote(args.name, force=args.force, actor=actor)
            elif args.action == "rollback":
                life.rollback(actor)
        finally:
            life.engine.dispose()
    except LifecycleError as exc:
        print(f"steel models {args.action}: {exc}", file=sys.stderr)
        return exc.exit_code
    return exit_codes.OK


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action not in (None, "list"):
        return run_action(args)
    entries = list_models()
    registry = registry_summary()
    if args.json:
        # Still one entry per bundle (scripts read it so); each gains its registered versions,
        # None where the registry could not be read.
        by_bundle: dict[str, list[dict[str, Any]]] = {}
        for v in registry.get("versions", []):
            by_bundle.setdefault(v["bundle"], []).append({k: x for k, x in v.items() if k != "bundle"})
        for e in entries:
            # Registered by folder name, which a bundle's model.json "name" need not repeat.
            folder = Path(e["path"]).name
            e["versions"] = by_bundle.get(folder, []) if "versions" in registry else None
        if "error" in registry:
            print(registry["error"], file=sys.stderr)
        print(json.dumps(entries, indent=2))
    else:
        print(format_models(entries))
        print()
        print(format_registry(registry))
    return exit_codes.BAD_INPUT if any("error" in e for e in entries) else exit_codes.OK
