"""Defect-free steel surface for the synthetic camera: texture, illumination, strip edge, sensor.

Geometry follows Severstal: the strip runs along the frame's height (rows), so rolling
texture is stretched vertically; the 1600-pixel width spans across the strip, where the
lamp's falloff makes the illumination gradient. The surface is built in two layers so that
defects and harmless marks can be painted between them:

* ``surface_albedo``: the strip's own reflectance around its mean grey level (float32),
* ``expose``: illumination, strip edge, sensor noise and quantisation to uint8.

Levels were matched to the four real frames in the shared sample (mean grey 70-120,
high-pass noise 7-10 grey levels, row/column mean spread 10-25).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH

# Surface kinds seen in Severstal: matte with vertical streaks, ground with fine
# cross-grain, dark mill scale, and embossed checker plate.
STYLES = ("matte", "ground", "scale", "checker")
STYLE_WEIGHTS = (0.42, 0.30, 0.20, 0.08)
# Mean grey level at which marks and defects have their nominal contrast; they scale with the strip's level.
REFERENCE_LEVEL = 110.0


def smooth_noise(
    rng: np.random.Generator,
    knots: tuple[int, int],
    shape: tuple[int, int] = (FRAME_HEIGHT, FRAME_WIDTH),
) -> np.ndarray:
    """Unit-variance noise with ``knots`` (rows, cols) random values interpolated over ``shape``.

    Few knots along one axis and many along the other give streaks along the first.
    """
    small = rng.standard_normal(knots, dtype=np.float32)
    out = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    # Cubic interpolation between knots lowers the variance; restore it so amplitudes mean grey levels.
    std = float(out.std())
    return out / std if std > 0 else out


@dataclass(frozen=True)
class StripEdge:
    """The strip's edge in the frame: columns beyond ``x_at(y)`` on ``side`` are off-strip."""

    side: str  # "left": off-strip region is left of the edge; "right": right of it
    x_top: float
    x_bottom: float

    def x_at(self, rows: np.ndarray) -> np.ndarray:
        return self.x_top + (self.x_bottom - self.x_top) * rows / max(FRAME_HEIGHT - 1, 1)

    def on_strip(self) -> np.ndarray:
        """Bool [H, W]: True where the pixel shows the strip."""
        edge = self.x_at(np.arange(FRAME_HEIGHT, dtype=np.float32))[:, None]
        cols = np.arange(FRAME_WIDTH, dtype=np.float32)[None, :]
        return cols >= edge if self.side == "left" else cols < edge

    def strip_columns(self) -> tuple[int, int]:
        """Columns [first, stop) that are on the strip in every row."""
        if self.side == "left":
            return int(np.ceil(max(self.x_top, self.x_bottom))), FRAME_WIDTH
        return 0, int(np.floor(min(self.x_top, self.x_bottom)))


def random_edge(rng: np.random.Generator) -> StripEdge:
    """A strip edge somewhere in the frame, leaving at least a third of the width on the strip."""
    side = "left" if rng.random() < 0.5 else "right"
    off_width = rng.uniform(0.05, 0.62) * FRAME_WIDTH
    x = off_width if side == "left" else FRAME_WIDTH - off_width
    tilt = rng.normal(0.0, 2.0)  # the strip wanders a few pixels over one frame
    return StripEdge(side, float(x - tilt), float(x + tilt))


@dataclass(frozen=True)
class Surface:
    style: str
    level: float  # mean grey level of the strip before illumination
    albedo: np.ndarray  # float32 [H, W], grey levels around ``level``


def _matte(rng: np.random.Generator, level: float) -> np.ndarray:
    # Vertical "flames": patchy streaks tens of pixels long, a few wide, at three scales.
    flames = (
        smooth_noise(rng, (6, 420)) * 0.55
        + smooth_noise(rng, (4, 120)) * 0.35
        + smooth_noise(rng, (3, 30)) * 0.4
    )
    patchy = np.tanh(1.6 * (flames - rng.uniform(-0.3, 0.6)))
    texture = patchy * rng.uniform(7.0, 15.0) + smooth_noise(rng, (64, 800)) * rng.uniform(2.0, 4.0)
    return level + texture


def _ground(rng: np.random.Generator, level: float) -> np.ndarray:
    # Fine cross-grain: long thin lines across the strip, wavy and slightly slanted, over faint
    # vertical streaks. The lines are drawn straight, then bent by a smooth vertical displacement.
    grain = smooth_noise(rng, (120, int(rng.integers(12, 30)))) * rng.uniform(3.0, 6.0)
    grain *= 0.6 + 0.4 * np.abs(smooth_noise(rng, (4, 12)))
    bend = smooth_noise(rng, (2, 24))[0:1] * rng.uniform(1.5, 4.0)
    slant = np.linspace(-1.0, 1.0, FRAME_WIDTH, dtype=np.float32)[None, :] * rng.uniform(-20.0, 20.0)
    map_x, map_y = np.meshgrid(
        np.arange(FRAME_WIDTH, dtype=np.float32), np.arange(FRAME_HEIGHT, dtype=np.float32)
    )
    map_y += bend + slant
    grain = cv2.remap(grain, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    fine = smooth_noise(rng, (128, 800)) * rng.uniform(1.5, 3.0)
    streaks = smooth_noise(rng, (5, 300)) * rng.uniform(2.0, 4.0) + smooth_noise(rng, (3, 40)) * 3.0
    return level + grain + fine + streaks


def _scale(rng: np.random.Generator, level: float) -> np.ndarray:
    # Mill scale: soft darker clouds elongated along the rolling direction, grainy inside.
    clouds = smooth_noise(rng, (6, 28)) + 0.5 * smooth_noise(rng, (14, 90))
    dark = np.clip(clouds - rng.uniform(0.0, 0.8), 0.0, None) * rng.uniform(8.0, 16.0)
    streaks = smooth_noise(rng, (6, 300)) * rng.uniform(3.0, 6.0)
    grain = smooth_noise(rng, (64, 400)) * rng.uniform(2.0, 4.0)
    return level - dark + streaks + grain


def _checker(rng: np.random.Generator, level: float) -> np.ndarray:
    # Embossed diamond lattice (checker plate): two families of oblique ridges, lit from one side.
    period_x = rng.uniform(170.0, 230.0)
    period_y = rng.uniform(200.0, 300.0)
    half_width = rng.uniform(0.04, 0.06)
    phase = rng.uniform(0.0, 1.0, size=2)
    ys, xs = np.mgrid[0:FRAME_HEIGHT, 0:FRAME_WIDTH].astype(np.float32)
    out = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), dtype=np.float32)
    for sign, ph in zip((1.0, -1.0), phase, strict=True):
        u = xs / period_x + sign * ys / period_y + ph
        t = (u - np.floor(u + 0.5)) / half_width  # signed distance to the ridge, in half-widths
        ridge = np.exp(-(t**2))
        flank = np.exp(-((np.abs(t) - 1.3) ** 2) * 6.0)
        out += 22.0 * ridge + 8.0 * t * ridge - 55.0 * flank * (0.7 + 0.3 * np.sign(t))
    out += smooth_noise(rng, (6, 200)) * 4.0
    return level + out


_RENDERERS = {"matte": _matte, "ground": _ground, "scale": _scale, "checker": _checker}


def surface_albedo(rng: np.random.Generator, style: str | None = None) -> Surface:
    """A clean strip surface (no illumination, no noise) of a random or given style."""
    if style is None:
        style = STYLES[int(rng.choice(len(STYLES), p=STYLE_WEIGHTS))]
    if style not in _RENDERERS:
        raise ValueError(f"unknown surface style {style!r}; expected one of {STYLES}")
    level = float(rng.uniform(85.0, 135.0))
    albedo = _RENDERERS[style](rng, level).astype(np.float32, copy=False)
    # Every surface has a grain of a pixel or two, finer than any defect detail.
    albedo += smooth_noise(rng, (128, 800)) * rng.uniform(7.0, 11.0)
    return Surface(style, level, albedo)


def illumination(rng: np.random.Generator) -> np.ndarray:
    """Multiplicative light field [H, W]: lamp falloff across the width, a gradient along the strip."""
    x = np.linspace(-1.0, 1.0, FRAME_WIDTH, dtype=np.float32)
    centre = rng.normal(0.0, 0.25)
    falloff = 1.0 - rng.uniform(0.15, 0.45) * (x - centre) ** 2
    wobble = smooth_noise(rng, (1, int(rng.integers(4, 9))), (1, FRAME_WIDTH))[0] * rng.uniform(0.04, 0.12)
    across = falloff + wobble
    y = np.linspace(-0.5, 0.5, FRAME_HEIGHT, dtype=np.float32)
    # The real frames are mostly brighter towards the bottom row, by a quarter to a half.
    slope = rng.uniform(0.25, 0.75) if rng.random() < 0.85 else rng.uniform(-0.2, 0.2)
    along = 1.0 + slope * y
    return np.outer(along, across).astype(np.float32)


def expose(
    rng: np.random.Generator, radiance: np.ndarray, edge: StripEdge | None, level: float
) -> np.ndarray:
    """Sensor model: off-strip darkness, column gain, read noise, sparkle, quantisation to uint8."""
    image = radiance
    if edge is not None:
        on_strip = edge.on_strip()
        cols = np.arange(FRAME_WIDTH, dtype=np.float32)[None, :]
        edge_x = edge.x_at(np.arange(FRAME_HEIGHT, dtype=np.float32))[:, None]
        depth = (cols - edge_x) if edge.side == "left" else (edge_x - cols)
        # The rolled edge catches the light for a few tens of pixels, then a darker band follows.
        rim_width = rng.uniform(10.0, 40.0)
        rim = rng.uniform(0.15, 0.45) * np.exp(-np.clip(depth, 0, None) / rim_width)
        band = rng.uniform(0.0, 0.2) * np.exp(-((depth - rng.uniform(80, 200)) ** 2) / 2500.0)
        image = image * (1.0 + rim - band)
        off = rng.uniform(1.0, 8.0) + smooth_noise(rng, (4, 60)) * 1.2
        image = np.where(on_strip, image, off)
    # A line-scan camera: each column has its own pixel gain, each row its own exposure (lamp flicker).
    column_gain = 1.0 + rng.normal(0.0, rng.uniform(0.005, 0.02), size=FRAME_WIDTH).astype(np.float32)
    row_gain = 1.0 + rng.normal(0.0, rng.uniform(0.01, 0.04), size=FRAME_HEIGHT).astype(np.float32)
    image = image * np.outer(row_gain, column_gain)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(3.5, 5.5)
    # Sparkle: isolated bright pixels from specular grains, more of them on brighter strips.
    count = int(rng.poisson(rng.uniform(100.0, 900.0) * level / REFERENCE_LEVEL))
    ys = rng.integers(0, FRAME_HEIGHT, size=count)
    xs = rng.integers(0, FRAME_WIDTH, size=count)
    sparkle = rng.uniform(20.0, 90.0, size=count).astype(np.float32)
    if edge is not None:
        sparkle *= on_strip[ys, xs]
    image[ys, xs] += sparkle
    return np.clip(image, 0.0, 255.0).astype(np.uint8)
