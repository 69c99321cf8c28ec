"""Options that mean the same for every command running a bundle's networks over frames
(`steel eval`, `steel predict`, `steel tune`). Imports nothing heavy: `--help` stays fast."""

from __future__ import annotations

import argparse


def add_network_run_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """--batch-size (default ``batch_size``, the command's own), --device and --no-progress."""
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="cpu", help="torch device for the networks, e.g. cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
