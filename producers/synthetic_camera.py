"""The synthetic camera: seeded, realistic 1600x256 Severstal-like strip frames with exact masks.

It is the product's default camera and default training data. Frame ``i`` of seed ``s`` is
always the same picture (its random stream is seeded by ``(s, i)``), so a dataset, a demo run
and a Kafka producer can be reproduced or resumed from any index, in any process.

A frame is built in this order: class set and exact masks (``synth_layout``), clean surface
(``synth_texture``), harmless marks outside the masks (``synth_marks``), defects inside the
masks (``synth_defects``), then illumination, strip edge and sensor (``synth_texture.expose``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from producers.defect_shapes import ShapeLibrary, default_library
from producers.synth_defects import paint_defects
from producers.synth_layout import combo_probabilities, normalise_frequencies, place_defects, sample_classes
from producers.synth_marks import paint_marks
from producers.synth_texture import (
    REFERENCE_LEVEL,
    STYLES,
    StripEdge,
    expose,
    illumination,
    random_edge,
    surface_albedo,
)
from steelcore.severstal import CLASS_IDS

DEFAULT_EDGE_PROBABILITY = 0.1  # share of frames taken at a strip edge (dark off-strip region)
DEFAULT_MARK_RATE = 0.7  # mean number of harmless marks (oil spots, water stains) per frame


@dataclass(frozen=True)
class SynthFrame:
    """One synthetic frame and its ground truth."""

    index: int
    image_id: str  # file stem, e.g. "s7-0000042"; the Kaggle ImageId is ``file_name``
    image: np.ndarray  # uint8 [256, 1600]
    masks: np.ndarray  # uint8 0/1 [4, 256, 1600], pairwise disjoint
    harmless: np.ndarray  # bool [256, 1600]: footprint of oil spots and water stains (not defects)
    edge: StripEdge | None  # where the strip ends, for frames at a strip edge
    style: str  # surface kind, one of synth_texture.STYLES

    @property
    def file_name(self) -> str:
        return f"{self.image_id}.jpg"

    @property
    def classes(self) -> tuple[int, ...]:
        """Class ids present in the frame."""
        return tuple(c for c, m in zip(CLASS_IDS, self.masks, strict=True) if m.any())


class SyntheticCamera:
    """Deterministic generator of synthetic strip frames.

    ``class_frequencies``: share of frames that contain each class, as {class_id: share} or four
    shares in class order; ``None`` mirrors Severstal (about half the frames clean, class 3 most
    common, class 2 rare), with the real co-occurrence of classes kept as far as the shares allow.
    ``edge_probability``: share of frames at a strip edge. ``mark_rate``: mean harmless marks per frame.
    ``style``: force one surface kind (default: a random mix).
    """

    def __init__(
        self,
        seed: int = 0,
        class_frequencies: Mapping[int, float] | Sequence[float] | None = None,
        edge_probability: float = DEFAULT_EDGE_PROBABILITY,
        mark_rate: float = DEFAULT_MARK_RATE,
        style: str | None = None,
        library: ShapeLibrary | None = None,
        start_index: int = 0,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not 0.0 <= edge_probability <= 1.0:
            raise ValueError(f"edge_probability must be in [0, 1], got {edge_probability}")
        if not 0.0 <= mark_rate <= 50.0:
            raise ValueError(f"mark_rate must be in [0, 50] marks per frame, got {mark_rate}")
        if style is not None and style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.seed = int(seed)
        self.library = library if library is not None else default_library()
        frequencies = None if class_frequencies is None else normalise_frequencies(class_frequencies)
        self.combo_probabilities = combo_probabilities(self.library, frequencies)
        self.edge_probability = float(edge_probability)
        self.mark_rate = float(mark_rate)
        self.style = style
        self._next_index = int(start_index)

    @property
    def class_frequencies(self) -> dict[int, float]:
        """The expected share of frames containing each class."""
        combos = np.arange(self.combo_probabilities.size)
        return {
            c: float(self.combo_probabilities[(combos >> bit & 1).astype(bool)].sum())
            for bit, c in enumerate(CLASS_IDS)
        }

    @property
    def clean_fraction(self) -> float:
        """The expected share of defect-free frames."""
        return float(self.combo_probabilities[0])

    def image_id(self, index: int) -> str:
        return f"s{self.seed}-{index:07d}"

    def frame(self, index: int) -> SynthFrame:
        """Frame number ``index`` (>= 0); the same for the same seed, whatever was generated before."""
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
            raise ValueError(f"frame index must be a non-negative integer, got {index!r}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))
        edge = random_edge(rng) if rng.random() < self.edge_probability else None
        classes = sample_classes(rng, self.combo_probabilities)
        masks = place_defects(rng, self.library, classes, edge)
        surface = surface_albedo(rng, self.style)
        albedo = surface.albedo
        gain = surface.level / REFERENCE_LEVEL
        keep_clear = masks.any(axis=0)
        if edge is not None:
            keep_clear |= ~edge.on_strip()
        harmless = paint_marks(albedo, rng, int(rng.poisson(self.mark_rate)), keep_clear, gain)
        paint_defects(albedo, masks, rng, surface.level)
        image = expose(rng, albedo * illumination(rng), edge, surface.level)
        return SynthFrame(
            index=int(index),
            image_id=self.image_id(int(index)),
            image=image,
            masks=masks,
            harmless=harmless,
            edge=edge,
            style=surface.style,
        )

    def next_frame(self) -> SynthFrame:
        """The next frame in index order (starting at ``start_index``)."""
        frame = self.frame(self._next_index)
        self._next_index += 1
        return frame

    def __iter__(self) -> Iterator[SynthFrame]:
        while True:
            yield self.next_frame()
