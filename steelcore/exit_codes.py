"""Exit codes of every `steel` subcommand; scripts and CI branch on them."""

from __future__ import annotations

OK = 0
FAILURE = 1  # the job ran and failed (a check did not pass, a target was missed)
USAGE = 2  # bad command line (argparse uses 2 as well)
BAD_INPUT = 3  # input data missing or malformed
UNAVAILABLE = 4  # a service (Kafka, Triton, Postgres, Redis) could not be reached
INTERRUPTED = 130  # stopped by Ctrl-C / SIGINT
