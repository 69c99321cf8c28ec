"""config.pbtxt text of the serving repository, rewritten for the model lifecycle: which versions a
model serves (its version_policy) and which version the ensemble's steps are pinned to. Pure text
functions; Triton reads the result when the lifecycle asks it to load the model."""

from __future__ import annotations

import re
from collections.abc import Iterable

_POLICY = re.compile(r"version_policy:\s*\{.*\}[ \t]*$", re.MULTILINE)
_SPECIFIC = re.compile(r"specific:\s*\{\s*versions:\s*\[([^\]]*)\]")
_STEP_VERSION = re.compile(r"(model_version:\s*)(-?\d+)")


def version_policy_line(versions: Iterable[int]) -> str:
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def set_versions(config_text: str, versions: Iterable[int]) -> str:
    """``config_text`` serving exactly ``versions`` (its version_policy replaced or added)."""
    versions = sorted(set(versions))
    if not versions or min(versions) < 1:
        raise ValueError(f"versions must be integers >= 1, got {versions}")
    line = version_policy_line(versions)
    if _POLICY.search(config_text):
        return _POLICY.sub(line, config_text, count=1)
    # No policy yet (Triton's default serves the newest only): add it after max_batch_size.
    head, sep, rest = config_text.partition("\n")
    anchor = re.search(r"^max_batch_size:.*$", config_text, re.MULTILINE)
    if anchor is None:
        return f"{head}{sep}{line}\n{rest}"
    return config_text[: anchor.end()] + "\n" + line + config_text[anchor.end() :]


def served_versions(config_text: str) -> list[int]:
    """The versions a config's ``specific`` policy lists; [] for any other policy."""
    match = _SPECIFIC.search(config_text)
    if match is None:
        return []
    return sorted(int(v) for v in re.findall(r"\d+", match.group(1)))


def pin_ensemble(config_text: str, version: int) -> str:
    """The ensemble config with every step pinned to ``version``."""
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    text, count = _STEP_VERSION.subn(lambda m: f"{m.group(1)}{version}", config_text)
    if count == 0:
        raise ValueError("ensemble config has no step with a model_version")
    return text


def pinned_version(config_text: str) -> int | None:
    """The version the ensemble's steps are pinned to; None when they disagree or float (-1)."""
    found = {int(v) for _, v in _STEP_VERSION.findall(config_text)}
    return found.pop() if len(found) == 1 and min(found) >= 1 else None
