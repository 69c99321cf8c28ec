"""`steel`: one console script, one subcommand per job.

Each job lives in its own module, which exposes
``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. The module is imported only when its
subcommand is chosen, so `steel produce` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from steelcore import exit_codes


@dataclass(frozen=True)
class Command:
    module: str
    summary: str


# Order is the order shown by `steel --help`: data, models, serving, pipeline, tools.
COMMANDS: dict[str, Command] = {
    "synth": Command("producers.synth_dataset", "write a synthetic Kaggle-format dataset"),
    "train": Command("training.train", "train the classifier or the ResUNet segmenter on a dataset"),
    "retrain": Command(
        "training.retrain", "fine-tune production on operator-reviewed frames into a candidate"
    ),
    "tune": Command("training.tune", "pick gating / pixel thresholds / minimum areas on a validation split"),
    "eval": Command("training.evaluate", "Kaggle mean Dice, IoU, precision, recall, F1, AUC of a model"),
    "predict": Command("training.predict", "write a Kaggle submission CSV for a folder of frames"),
    "models": Command(
        "training.zoo", "model bundles and versions; shadow, promote, roll back on the running Triton"
    ),
    "quantize": Command(
        "training.quantize", "int8-quantise a model's networks for the CPU runtime (calibrated on frames)"
    ),
    "export": Command("training.export", "export a model to TorchScript / ONNX or a Triton repository"),
    "triton": Command("stack.triton_cli", "serve the model repository with the embedded Triton server"),
    "up": Command("stack.up_cli", "start the embedded stack (Kafka, Triton, Postgres, Redis)"),
    "down": Command("stack.down_cli", "stop the embedded stack"),
    "status": Command("stack.status_cli", "show the health of each service"),
    "produce": Command("producers.produce_cli", "publish camera frames (synthetic or replayed) to Kafka"),
    "work": Command("workers.work_cli", "run an inference worker: Kafka -> Triton -> Postgres + Redis"),
    "actuator": Command("workers.actuator", "reference reject actuator reading the Redis alarm stream"),
    "query": Command("workers.query_cli", "query the defect history (table, CSV or Kaggle CSV)"),
    "maintain": Command(
        "workers.maintain", "database housekeeping: purge old images, create/drop weekly frames partitions"
    ),
    "dashboard": Command("dashboard.launch", "start the Streamlit dashboard"),
    "demo": Command("stack.demo", "the main job: stack, cameras, workers, actuator and live summary"),
    "bench": Command("benchmarks.cli", "benchmarks (rle, model, triton, pipeline, queries) to JSON + table"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {cmd.summary}" for name, cmd in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="steel",
        description="ResUNet-Steel: real-time steel-surface inspection.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun `steel COMMAND --help` for a command's options.\n"
        "Exit codes: 0 ok, 1 job failed, 2 usage, 3 bad input, 4 service unavailable, 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    # Split global options from the command and its own arguments.
    split = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    opts = top.parse_args(argv[: split + 1])
    if opts.command is None:
        top.print_help()
        return exit_codes.USAGE
    logging.basicConfig(
        level=logging.DEBUG if opts.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = COMMANDS[opts.command]
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"steel {opts.command}", description=command.summary)
    module.add_arguments(parser)
    args = parser.parse_args(argv[split + 1 :])
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
