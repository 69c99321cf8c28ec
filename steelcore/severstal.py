"""Severstal conventions: frame geometry and the four defect classes.

Every other module takes frame size and class ids from here, so a camera with
another geometry is a change in one place.
"""

from __future__ import annotations

FRAME_HEIGHT = 256
FRAME_WIDTH = 1600
FRAME_SHAPE = (FRAME_HEIGHT, FRAME_WIDTH)
NUM_CLASSES = 4
CLASS_IDS = (1, 2, 3, 4)

CLASS_NAMES = {
    1: "pitting",
    2: "inclusion",
    3: "scratches",
    4: "patches",
}

# RGB overlay colours used by the contact sheet, dashboard and plots.
CLASS_COLOURS_RGB = {
    1: (255, 196, 0),
    2: (0, 200, 255),
    3: (255, 40, 80),
    4: (80, 255, 80),
}
