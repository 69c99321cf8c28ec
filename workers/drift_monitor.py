"""Is a camera still showing what the model was trained on? Per-camera input and output statistics
against the reference recorded with the model bundle, with hysteresis so one drift episode raises
one inspection alarm and one clear. Pure logic, no I/O: the worker feeds it each judged frame.

Input statistics (``frame_input_stats``): brightness and contrast (mean and standard deviation of
the gray levels), texture energy (mean absolute Laplacian of a 4x smaller frame, so blur and focus
show) and the JPEG size. They are compared as a window mean against the reference's per-frame mean
and spread: a shift of ``raise_z`` reference standard deviations raises, back under ``clear_z``
clears. Output statistics: the share of frames with a defect of each class and the share of frames
whose class probability lies within ``near_margin`` of its gate (the model is unsure); each raises
when the window's share exceeds the reference share by ``raise_share`` (absolute), so a production
line with fewer defects than the training set never alarms for being cleaner.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

REFERENCE_FILE = "drift_reference.json"
REFERENCE_VERSION = 1
INPUT_STATS = ("brightness", "contrast", "texture", "jpeg_kb")
# Spreads below these are floors: a reference made of near-identical frames would otherwise turn
# any tiny change into a drift.
MIN_SPREAD = {"brightness": 2.0, "contrast": 2.0, "texture": 0.5, "jpeg_kb": 2.0}
_UNITS = {"brightness": "gray levels", "contrast": "gray levels of spread", "texture": "", "jpeg_kb": "KiB"}
_WORDS = {
    "brightness": ("brighter", "darker"),
    "contrast": ("more contrasted", "flatter"),
    "texture": ("sharper or noisier", "blurrier"),
    "jpeg_kb": ("larger as JPEG", "smaller as JPEG"),
}


def frame_input_stats(image: np.ndarray, jpeg_bytes: int | None = None) -> dict[str, float]:
    """What ``INPUT_STATS`` measure on one decoded 8-bit gray frame; ``jpeg_bytes`` is the size of
    its JPEG payload (None for frames sent raw or as PNG: the statistic is then not kept)."""
    gray = np.asarray(image, dtype=np.uint8)
    small = cv2.resize(
        gray, (max(1, gray.shape[1] // 4), max(1, gray.shape[0] // 4)), interpolation=cv2.INTER_AREA
    )
    # One pass in OpenCV: numpy's mean and std over the 410 k pixels cost the worker more than
    # storing the frame.
    mean, std = cv2.meanStdDev(gray)
    stats = {
        "brightness": float(mean[0, 0]),
        "contrast": float(std[0, 0]),
        "texture": float(np.abs(cv2.Laplacian(small.astype(np.float32), cv2.CV_32F)).mean()),
    }
    if jpeg_bytes is not None:
        stats["jpeg_kb"] = jpeg_bytes / 1024.0
    return stats


@dataclass(frozen=True)
class DriftReference:
    """What the model knows: per-frame mean and spread of each input statistic over its training
    frames, and its output shares on them (recorded by training/drift_reference.py)."""

    input_mean: dict[str, float]
    input_std: dict[str, float]
    defect_share: tuple[float, ...]  # per class, frames with a defect of that class
    near_share: float  # frames with any class probability within near_margin of its gate
    near_margin: float
    frames: int
    source: str = ""
    gates: tuple[float, ...] = ()  # the bundle's gate thresholds the near share was counted against

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REFERENCE_VERSION,
            "frames": self.frames,
            "source": self.source,
            "input": {k: {"mean": self.input_mean[k], "std": self.input_std[k]} for k in self.input_mean},
            "output": {
                "defect_share": list(self.defect_share),
                "near_share": self.near_share,
                "near_margin": self.near_margin,
                "gates": list(self.gates),
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriftReference:
        if data.get("version") != REFERENCE_VERSION:
            raise ValueError(f"drift reference version {data.get('version')!r}, expected {REFERENCE_VERSION}")
        inputs = data["input"]
        unknown = set(inputs) - set(INPUT_STATS)
        if unknown:
            raise ValueError(f"drift reference has unknown input statistics {sorted(unknown)}")
        output = data["output"]
        return cls(
            input_mean={k: float(v["mean"]) for k, v in inputs.items()},
            input_std={k: float(v["std"]) for k, v in inputs.items()},
            defect_share=tuple(float(x) for x in output["defect_share"]),
            near_share=float(output["near_share"]),
            near_margin=float(output["near_margin"]),
            frames=int(data["frames"]),
            source=str(data.get("source", "")),
            gates=tuple(float(g) for g in output.get("gates", ())),
        )

    @classmethod
    def load(cls, bundle_dir: Path) -> DriftReference | None:
        """The reference saved in a model bundle; None for a bundle trained before references."""
        return cls.read(Path(bundle_dir) / REFERENCE_FILE)

    @classmethod
    def read(cls, path: Path) -> DriftReference | None:
        """The reference in the file ``path``; None when there is no such file."""
        if not path.is_file():
            return None
        return cls.from_json(json.loads(path.read_text()))

    def save(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / REFERENCE_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def near_threshold(probs: Sequence[float], gates: Sequence[float], margin: float) -> bool:
    """Whether any class probability lies within ``margin`` of its gate. A gate of 0 lets every
    frame through (no gating), so no probability is near a decision there."""
    return any(g > 0 and abs(float(p) - float(g)) <= margin for p, g in zip(probs, gates, strict=True))


@dataclass(frozen=True)
class DriftEvent:
    """A camera's drift episode starting (raised) or ending (cleared)."""

    camera: str  # "line/camera"
    state: Literal["raised", "cleared"]
    statistics: tuple[str, ...]  # raised: what left the reference; cleared: what had
    message: str


@dataclass
class _CameraWindow:
    size: int
    values: dict[str, deque[float]] = field(default_factory=dict)
    drifting: set[str] = field(default_factory=set)

    def push(self, name: str, value: float) -> None:
        self.values.setdefault(name, deque(maxlen=self.size)).append(value)

    def mean(self, name: str) -> float | None:
        window = self.values.get(name)
        if window is None or len(window) < self.size:
            return None  # not enough frames yet to say anything
        return math.fsum(window) / len(window)


@dataclass
class DriftMonitor:
    """Keeps a window of the last ``window`` frames per camera and says when a statistic leaves the
    reference (raised) or comes back (cleared), once per episode and camera."""

    reference: DriftReference
    window: int = 300
    raise_z: float = 1.5
    clear_z: float = 1.0
    raise_share: float = 0.25
    clear_share: float = 0.15
    # False while the judging model is not the one the reference was recorded with: its output
    # shares (defects per class, unsure frames) are its own, the camera's inputs are not.
    outputs: bool = True
    _cameras: dict[str, _CameraWindow] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1 frame, got {self.window}")
        if not 0 <= self.clear_z < self.raise_z or not 0 <= self.clear_share < self.raise_share:
            raise ValueError("the clear thresholds must lie below the raise thresholds (hysteresis)")

    def drifting(self, camera: str) -> set[str]:
        """The statistics of ``camera`` in a drift episode now."""
        window = self._cameras.get(camera)
        return set(window.drifting) if window else set()

    def settled(self) -> list[str]:
        """Cameras seen over a full window and within the reference: a worker that took a camera
        over after a rebalance can end an episode another worker raised."""
        return [
            camera
            for camera, window in self._cameras.items()
            if not window.drifting and any(window.mean(name) is not None for name in window.values)
        ]

    def observe(
        self,
        camera: str,
        inputs: dict[str, float],
        probs: Sequence[float],
        present: Sequence[bool],
        gates: Sequence[float],
    ) -> DriftEvent | None:
        """One judged frame of ``camera``: its input statistics, class probabilities, which classes
        it holds a defect of, and the gates. Returns the camera's episode starting or ending with
        it: a darker lamp moves brightness, contrast and JPEG size together, and that is one
        episode, so statistics that join a running episode raise nothing new."""
        window = self._cameras.setdefault(camera, _CameraWindow(self.window))
        for name, value in inputs.items():
            if name in self.reference.input_mean and math.isfinite(value):
                window.push(name, value)
        if self.outputs:
            for k, has_defect in enumerate(present):
                window.push(f"defect_share_c{k + 1}", 1.0 if has_defect else 0.0)
            near = near_threshold(probs, gates, self.reference.near_margin)
            window.push("near_share", 1.0 if near else 0.0)
        before = set(window.drifting)
        found = [self._check_input(window, name) for name in self.reference.input_mean]
        found += [self._check_share(window, name) for name in window.values if "share" in name]
        if not before and window.drifting:
            texts = [text for text in found if text]
            return DriftEvent(
                camera,
                "raised",
                tuple(sorted(window.drifting)),
                f"camera {camera}: " + "; ".join(texts) + "; results unreliable",
            )
        if before and not window.drifting:
            return DriftEvent(
                camera,
                "cleared",
                tuple(sorted(before)),
                f"camera {camera}: frames back within what the model knows",
            )
        return None

    def _check_input(self, window: _CameraWindow, name: str) -> str | None:
        """Updates the statistic's state; the words for it when it starts drifting now."""
        mean = window.mean(name)
        if mean is None:
            return None
        ref_mean = self.reference.input_mean[name]
        spread = max(self.reference.input_std[name], MIN_SPREAD.get(name, 1e-6))
        if not self._transition(window, name, abs(mean - ref_mean) / spread, self.raise_z, self.clear_z):
            return None
        shift = mean - ref_mean
        word = _WORDS[name][0 if shift > 0 else 1]
        unit = f" {_UNITS[name]}" if _UNITS[name] else ""
        return (
            f"frames {abs(shift):.0f}{unit} {word} than the model knows "
            f"({name} {mean:.1f}, reference {ref_mean:.1f} +- {spread:.1f})"
        )

    def _check_share(self, window: _CameraWindow, name: str) -> str | None:
        share = window.mean(name)
        if share is None:
            return None
        if name == "near_share":
            ref, what = self.reference.near_share, "frames the model is unsure of"
        else:
            k = int(name.removeprefix("defect_share_c"))
            ref = self.reference.defect_share[k - 1] if k <= len(self.reference.defect_share) else 0.0
            what = f"frames with class {k} defects"
        # One-sided: a cleaner line than the training set is no reason to distrust the model.
        # A short window's share is noisy: a rise must also be three standard errors of a binomial
        # share at the reference rate, or 6 scratched frames out of 10 would alarm by chance.
        noise = 3.0 * math.sqrt(ref * (1.0 - ref) / self.window)
        if not self._transition(window, name, share - ref, max(self.raise_share, noise), self.clear_share):
            return None
        return f"{share:.0%} {what} against {ref:.0%} when the model was made"

    @staticmethod
    def _transition(window: _CameraWindow, name: str, score: float, raise_at: float, clear_at: float) -> bool:
        """Moves the statistic in or out of drift (hysteresis); True when it starts drifting now."""
        if name not in window.drifting and score >= raise_at:
            window.drifting.add(name)
            return True
        if name in window.drifting and score <= clear_at:
            window.drifting.discard(name)
        return False
