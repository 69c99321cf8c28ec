"""The repository an embedded Triton serves: a mutable copy of the source repository under the run
directory, which ``steel models`` (stack.model_lifecycle) adds versions to; the git-tracked
``triton_models/`` is never written."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from steelcore.triton.model_names import MANIFEST

log = logging.getLogger("stack.triton_server")  # the launcher's log, as before the split

SERVING_REPOSITORY = "triton_repository"


def default_serving_repository(run_dir: Path) -> Path:
    """Where an embedded server keeps the repository it serves (and the lifecycle rewrites)."""
    return Path(run_dir) / SERVING_REPOSITORY


def _holds_only_version_one(repository: Path) -> bool:
    versions = {p.name for p in repository.glob("*/*") if p.is_dir() and p.name.isdigit()}
    return versions <= {"1"}


def prepare_serving_repository(source: Path, serving: Path) -> Path:
    """Copy ``source`` to ``serving`` when absent; returns ``serving``.

    An existing copy is kept: it holds the versions the lifecycle registered. Only a copy still
    holding version 1 alone (no lifecycle change yet) whose manifest differs from the source's is
    replaced, so a re-export of the source (`steel export`) reaches the server.
    """
    source, serving = Path(source).resolve(), Path(serving).resolve()
    if source == serving:
        return serving
    if serving.is_dir():
        manifest, copied = source / MANIFEST, serving / MANIFEST
        same = manifest.is_file() and copied.is_file() and manifest.read_bytes() == copied.read_bytes()
        if same or not _holds_only_version_one(serving):
            return serving
        log.info("serving repository %s is an older copy of %s: copying again", serving, source)
        shutil.rmtree(serving)
    serving.parent.mkdir(parents=True, exist_ok=True)
    staging = serving.with_name(f".{serving.name}-copying")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__"))
    staging.rename(serving)
    return serving
