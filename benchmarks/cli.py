"""`steel bench NAME [options]`: run one benchmark module.

Each benchmark lives in ``benchmarks/<name>_bench.py`` with the usual
``add_arguments(parser)`` / ``run(args) -> int`` pair. The module is imported
only when chosen, so `steel bench rle` never imports torch or tritonclient.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from steelcore import exit_codes

BENCHMARKS: dict[str, str] = {
    "rle": "Severstal RLE encode/decode vs the common Kaggle-kernel implementation",
    "model": "classifier and segmenter forward latency / throughput per batch size",
    "triton": "Triton ensemble latency and throughput over gRPC and HTTP",
    "pipeline": "end to end: camera -> Kafka -> worker -> Postgres + Redis alarm latency",
    "queries": "defect history queries on Postgres",
    "broker": "embedded broker memory (RSS) with and without topic rotation",
}


def module_name(benchmark: str) -> str:
    return f"benchmarks.{benchmark}_bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "benchmarks:\n"
        + "\n".join(f"  {name:<10} {summary}" for name, summary in BENCHMARKS.items())
        + "\n\nRun `steel bench NAME --help` for a benchmark's options. Results go to "
        "bench-results/NAME.json unless --json says otherwise."
    )
    parser.add_argument(
        "benchmark", nargs="?", choices=list(BENCHMARKS), metavar="NAME", help="which benchmark to run"
    )
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")


def run(args: argparse.Namespace) -> int:
    name = args.benchmark
    if name is None:
        print(
            f"steel bench: name a benchmark: {', '.join(BENCHMARKS)} (see steel bench --help)",
            file=sys.stderr,
        )
        return exit_codes.USAGE
    try:
        module = importlib.import_module(module_name(name))
    except ModuleNotFoundError as exc:
        if exc.name == module_name(name):
            print(
                f"steel bench: benchmark {name!r} is not implemented yet ({module_name(name)})",
                file=sys.stderr,
            )
        else:
            print(
                f"steel bench: benchmark {name!r} needs the module {exc.name!r}, which is not installed",
                file=sys.stderr,
            )
        return exit_codes.FAILURE
    parser = argparse.ArgumentParser(prog=f"steel bench {name}", description=BENCHMARKS[name])
    module.add_arguments(parser)
    bench_args = parser.parse_args(args.options)
    try:
        return int(module.run(bench_args))
    except ValueError as exc:
        print(f"steel bench {name}: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
