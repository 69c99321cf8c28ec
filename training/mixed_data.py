"""Several labelled datasets trained on as one: `steel train --data A --data B:8`.

Each ``--data`` names a dataset folder in any layout `training.datasets` reads, optionally followed by
``:FACTOR``, how many times each of its images is drawn per epoch on average (``:8`` oversamples 65
real frames beside 2,400 synthetic ones; ``:0.25`` draws a quarter of a large set per epoch). The
datasets must predict the same classes. With ``--balanced`` the draws inside each dataset are
class-balanced; the factors still set each dataset's share of the epoch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.augment import balanced_weights
from training.datasets import Sample, SteelDataset, open_dataset

_FACTOR = re.compile(r"^(?P<path>.+?):(?P<factor>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class DataSpec:
    """One dataset folder and how often each of its images is drawn per epoch."""

    path: str
    factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"the sampling factor of {self.path} must be > 0; got {self.factor}")

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        """'DIR' or 'DIR:FACTOR' (a folder whose own name ends in ':N' must be given without a factor)."""
        text = str(text).strip()
        match = _FACTOR.match(text)
        if match and not Path(text).is_dir():
            return cls(match["path"], float(match["factor"]))
        return cls(text)

    def __str__(self) -> str:
        return self.path if self.factor == 1.0 else f"{self.path}:{self.factor:g}"


def parse_specs(items: Sequence[str | DataSpec] | str) -> list[DataSpec]:
    if isinstance(items, str):
        items = [items]
    specs = [item if isinstance(item, DataSpec) else DataSpec.parse(item) for item in items]
    if not specs:
        raise ValueError("no training data given (--data DIR)")
    return specs


class MixedDataset(SteelDataset):
    """The concatenation of datasets with the same classes; image ids are prefixed by the part's index
    only when two parts share an id, so a single dataset keeps its own ids."""

    layout = "mixed"

    def __init__(self, parts: Sequence[SteelDataset], factors: Sequence[float], split: str) -> None:
        if not parts:
            raise ValueError("a mixed dataset needs at least one part")
        first = parts[0]
        for part in parts[1:]:
            if list(part.class_ids) != list(first.class_ids):
                raise ValueError(
                    f"{part.root} has classes {part.class_ids} but {first.root} has {first.class_ids}: "
                    "datasets trained together must label the same classes"
                )
        self.layout = "+".join(sorted({part.layout for part in parts}))
        self.parts = list(parts)
        self.factors = [float(f) for f in factors]
        self._index: list[tuple[int, int]] = [
            (p, i) for p, part in enumerate(parts) for i in range(len(part))
        ]
        ids = [parts[p].image_ids[i] for p, i in self._index]
        super().__init__(first.root, split, ids, first.class_ids, first.class_names)

    @property
    def roots(self) -> list[Path]:
        return [part.root for part in self.parts]

    def __getitem__(self, index: int) -> Sample:
        p, i = self._index[index]
        return self.parts[p][i]

    def class_presence(self) -> np.ndarray:
        if self._presence is None:
            rows = [part.class_presence() for part in self.parts]
            self._presence = np.concatenate(rows) if rows else np.zeros((0, self.num_classes), bool)
        return self._presence

    def part_of(self, index: int) -> int:
        return self._index[index][0]

    def subset(self, indices: Sequence[int]) -> MixedDataset:
        """Keep some images (by index into the mix), each part restricted accordingly."""
        chosen: list[list[int]] = [[] for _ in self.parts]
        for index in indices:
            p, i = self._index[index]
            chosen[p].append(i)
        return MixedDataset(
            [part.subset(c) for part, c in zip(self.parts, chosen, strict=True)], self.factors, self.split
        )

    def sampling_weights(self, balanced: bool) -> tuple[np.ndarray | None, int]:
        """(per-image draw probabilities or None for a plain permutation, draws per epoch)."""
        sizes = np.array([len(part) for part in self.parts], dtype=np.float64)
        draws = round(float((sizes * self.factors).sum()))
        if not balanced and all(f == 1.0 for f in self.factors):
            return None, len(self)
        weights = []
        for part, factor in zip(self.parts, self.factors, strict=True):
            if len(part) == 0:
                continue
            inner = balanced_weights(part.class_presence()) if balanced else np.full(len(part), 1 / len(part))
            weights.append(inner * len(part) * factor)
        all_weights = np.concatenate(weights)
        return all_weights / all_weights.sum(), max(1, draws)


def open_mixed(specs: Sequence[str | DataSpec] | str, split: str = "all") -> MixedDataset:
    """Open every dataset of specs at split and mix them; ValueError names the folder at fault."""
    parsed = parse_specs(specs)
    parts = []
    for spec in parsed:
        try:
            parts.append(open_dataset(spec.path, split))
        except ValueError as exc:
            raise ValueError(f"--data {spec}: {exc}") from exc
    return MixedDataset(parts, [s.factor for s in parsed], split)


class FrameVariants(SteelDataset):
    """``copies`` variants of each frame of a real dataset, each made by ``vary``; variant k of a frame
    is the same in every epoch and on every machine (its generator is seeded by the frame's id)."""

    suffix = "variant"
    salt: tuple[int, ...] = ()

    def __init__(self, real: SteelDataset, copies: int = 4, seed: int = 0) -> None:
        if copies < 1:
            raise ValueError(f"copies must be >= 1; got {copies}")
        self.real = real
        self.seed = seed
        self._keys = [(k, i) for k in range(copies) for i in range(len(real))]
        ids = [f"{real.image_ids[i]}#{self.suffix}{k}" for k, i in self._keys]
        super().__init__(real.root, real.split, ids, real.class_ids, real.class_names)

    def source_frame(self, index: int) -> int:
        """The index, in the real dataset, of the frame variant ``index`` is made from."""
        return self._keys[index][1]

    def _rng(self, index: int) -> np.random.Generator:
        k, i = self._keys[index]
        digest = int.from_bytes(hashlib.sha1(self.real.image_ids[i].encode()).digest()[:4], "big")
        return np.random.default_rng([self.seed, digest, k, *self.salt])

    def added_channels(self, rng: np.random.Generator, frame: int) -> list[int]:
        """The class channels a variant adds: decided by the generator's first draws."""
        raise NotImplementedError

    def vary(self, image: np.ndarray, masks: np.ndarray, frame: int, rng: np.random.Generator) -> Sample:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        frame = self.source_frame(index)
        image, masks, _ = self.real[frame]
        image, masks, _ = self.vary(image, masks, frame, self._rng(index))
        return image, masks, self.image_ids[index]

    def class_presence(self) -> np.ndarray:
        if self._presence is None:
            real = self.real.class_presence()
            rows = []
            for index in range(len(self._keys)):
                frame = self.source_frame(index)
                row = real[frame].copy()
                row[self.added_channels(self._rng(index), frame)] = True
                rows.append(row)
            self._presence = np.array(rows, dtype=bool).reshape(len(rows), self.num_classes)
        return self._presence

    def subset(self, indices: Sequence[int]) -> SteelDataset:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._keys = [self._keys[i] for i in indices]
        clone.image_ids = [self.image_ids[i] for i in indices]
        clone._presence = None
        return clone


class SyntheticOnReal(FrameVariants):
    """Variants of real frames with synthetic defects painted on (producers.synth_on_real)."""

    layout = "synthetic-on-real"
    suffix = "synthetic"

    def __init__(self, real: SteelDataset, copies: int = 4, seed: int = 0) -> None:
        from producers.synth_on_real import DefectPainter

        self.painter = DefectPainter()
        super().__init__(real, copies, seed)

    def added_channels(self, rng: np.random.Generator, frame: int) -> list[int]:
        return [self.class_ids.index(c) for c in self.painter.classes(rng)]

    def vary(self, image: np.ndarray, masks: np.ndarray, frame: int, rng: np.random.Generator) -> Sample:
        image, masks = self.painter.paint(image, masks, rng)
        return image, masks, ""
