"""The embedded Triton launcher's errors, and the hint each "cannot run here" error ends with."""

from __future__ import annotations

from steelcore.errors import SteelError
from steelcore.triton.exceptions import TritonUnavailableError


class TritonError(SteelError, RuntimeError):
    """The embedded Triton server failed to start or stopped unexpectedly."""


class EmbeddedTritonUnavailableError(TritonError, TritonUnavailableError):
    """The embedded server cannot run on this machine (binary, libraries or stub missing): no Triton
    to talk to, the same verdict as an unreachable external one (steelcore.triton.exceptions)."""


def external_hint() -> str:
    return (
        "Point the workers at an external Triton server instead, e.g. "
        "STEEL_TRITON_URL=triton-host:8001 (gRPC, the default protocol) or "
        "STEEL_TRITON_URL=triton-host:8000 with STEEL_TRITON_PROTOCOL=http, serving the "
        "repository written by `steel export --format onnx --repo OUT` (GPU) or triton_models/ (CPU)."
    )
