"""Time the networks as on a CPU with fewer vector instructions than this one (`--cpu-isa avx2`).

Machines of the product's kind differ: some have AVX-512 with bf16 and VNNI, others AVX2 only,
where OpenVINO has no bf16 and its int8 convolutions lack the VNNI dot product. The caps below make
this machine compute as an AVX2-only one does, so both can be compared in one place:

- ``ONEDNN_MAX_CPU_ISA`` caps oneDNN, which runs torch's and OpenVINO's convolutions, matrix
  products and most other OpenVINO kernels;
- ``ATEN_CPU_CAPABILITY`` caps torch's own kernels (batch norm, activations, the sigmoid over the
  maps).

Not capped: a few small OpenVINO kernels of its own (DepthToSpace, Interpolate, reductions: about
1 ms of the int8 segmenter's 13 ms a frame), so the emulated OpenVINO figures lean slightly fast;
clock speed, caches and memory stay this machine's, so compare ratios, not milliseconds.

Both libraries read the caps when they load, so the benchmark runs again in a fresh interpreter
with the caps set (``reexec_with_caps``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

NATIVE = "native"
CAPS: dict[str, dict[str, str]] = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
CHOICES: tuple[str, ...] = (NATIVE, *CAPS)


def caps_in_effect(isa: str) -> bool:
    return all(os.environ.get(key) == value for key, value in CAPS.get(isa, {}).items())


def reexec_with_caps(isa: str) -> None:
    """Replace this process with the same command under ``isa``'s caps, unless they are set already."""
    if isa == NATIVE or caps_in_effect(isa):
        return
    if isa not in CAPS:
        raise ValueError(f"cpu isa must be one of {CHOICES}, got {isa!r}")
    print(f"emulating an {isa.upper()}-only CPU: {' '.join(f'{k}={v}' for k, v in CAPS[isa].items())}")
    sys.stdout.flush()
    # orig_argv keeps `-m module` where argv would not.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **CAPS[isa]})


def describe(isa: str) -> dict[str, Any]:
    """What the results were measured under, for the JSON report."""
    import torch

    return {
        "cpu_isa": isa,
        "caps": CAPS.get(isa, {}),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
