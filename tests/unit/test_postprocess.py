"""Post-processing: gate, pixel threshold, minimum component area, overlap resolution."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from steelcore.postprocess import apply_postprocess, class_areas, probabilities, remove_small_components
from training.model_bundle import PostprocessParams


def _params(gate: list[float], pixel: list[float], area: list[int]) -> PostprocessParams:
    return PostprocessParams(gate_threshold=gate, pixel_threshold=pixel, min_area=area)


def test_pixel_threshold_per_class_is_inclusive() -> None:
    seg = np.array([[[[0.2, 0.5, 0.9]], [[0.2, 0.5, 0.9]]]], dtype=np.float32)  # [1, 2, 1, 3]
    out = apply_postprocess(None, seg, _params([0, 0], [0.5, 0.8], [0, 0]), overlaps=False)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0, 0], [0, 1, 1])
    np.testing.assert_array_equal(out[0, 1, 0], [0, 0, 1])


def test_gate_clears_class_below_its_threshold_only() -> None:
    seg = np.full((2, 2, 4, 4), 0.9, dtype=np.float32)
    cls = np.array([[0.3, 0.3], [0.7, 0.7]], dtype=np.float32)
    out = apply_postprocess(cls, seg, _params([0.5, 0.0], [0.5, 0.5], [0, 0]), overlaps=False)
    assert out[0, 0].sum() == 0  # class 1 gated: 0.3 < 0.5
    assert out[0, 1].sum() == 16  # class 2 gate disabled (0.0)
    assert out[1, 0].sum() == 16 and out[1, 1].sum() == 16
    # Without classifier probabilities there is no gate at all.
    assert apply_postprocess(None, seg, _params([0.5, 0.5], [0.5, 0.5], [0, 0]), overlaps=False).sum() == 64


def test_min_area_removes_small_components_and_keeps_large_ones() -> None:
    seg = np.zeros((1, 1, 10, 10), dtype=np.float32)
    seg[0, 0, 0:3, 0:3] = 1.0  # 9 px blob
    seg[0, 0, 8, 8] = 1.0  # 1 px speck
    seg[0, 0, 5, 5] = seg[0, 0, 6, 6] = 1.0  # 2 px joined diagonally (8-connectivity)
    out = apply_postprocess(None, seg, _params([0], [0.5], [2]))
    assert out[0, 0, 8, 8] == 0
    assert out[0, 0, 5, 5] == 1 and out[0, 0, 6, 6] == 1
    assert out[0, 0, 0:3, 0:3].all()
    assert class_areas(out).tolist() == [[11]]
    assert apply_postprocess(None, seg, _params([0], [0.5], [10])).sum() == 0


def test_remove_small_components_on_empty_mask() -> None:
    assert not remove_small_components(np.zeros((4, 4), np.uint8), 5).any()


def test_overlaps_resolved_to_most_probable_class() -> None:
    seg = np.zeros((1, 2, 1, 3), dtype=np.float32)
    seg[0, 0, 0] = [0.9, 0.6, 0.0]
    seg[0, 1, 0] = [0.7, 0.8, 0.9]
    params = _params([0, 0], [0.5, 0.5], [0, 0])
    out = apply_postprocess(None, seg, params)
    np.testing.assert_array_equal(out[0, :, 0], [[1, 0, 0], [0, 1, 1]])
    assert apply_postprocess(None, seg, params, overlaps=False)[0, :, 0].sum() == 5


def test_shape_mismatches_are_named() -> None:
    seg = np.zeros((1, 2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="3 entries for 2 classes"):
        apply_postprocess(None, seg, _params([0, 0, 0], [0.5] * 3, [0] * 3))
    with pytest.raises(ValueError, match="cls_probs"):
        apply_postprocess(np.zeros((1, 3)), seg, _params([0, 0], [0.5, 0.5], [0, 0]))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        apply_postprocess(None, seg[0], _params([0, 0], [0.5, 0.5], [0, 0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_uint8_codes_give_the_masks_of_the_probabilities_they_stand_for(seed: int) -> None:
    """The served segmenter answers round(255 p): masks on codes equal masks on codes / 255,
    thresholds that fall exactly on a code included, overlaps resolved the same way."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (2, 4, 24, 40), dtype=np.uint8)
    codes[:, :, :8] = 153  # exactly at 0.6 = 153 / 255, for every class
    codes[:, 2, 8:10] = 3
    cls = rng.random((2, 4)).astype(np.float32)
    cls[0, 2] = 0.9  # frame 0 passes class 3's gate
    # 3 / 255 as float32 lies above 3 / 255: thresholds tuned on probabilities are such values.
    params = _params([0.3, 0.0, 0.5, 0.2], [0.5, 0.6, float(np.float32(3 / 255)), 153 / 255], [0, 5, 20, 0])
    as_float = probabilities(codes)
    assert as_float.dtype == np.float32 and as_float.max() <= 1.0
    np.testing.assert_array_equal(probabilities(np.array([0, 51, 255], np.uint8)), np.float32([0, 0.2, 1]))
    for overlaps in (True, False):
        on_codes = apply_postprocess(cls, codes, params, overlaps=overlaps)
        np.testing.assert_array_equal(on_codes, apply_postprocess(cls, as_float, params, overlaps=overlaps))
    assert on_codes[:, 1, :8].all()  # code 153 meets the 0.6 threshold (class 2 has no gate)
    assert (on_codes[0, 2, 8:10] == 1).all()  # code 3 meets float32(3 / 255)


def test_module_does_not_import_torch() -> None:
    # Triton's postprocess model imports this module in a python backend without torch.
    code = "import sys, steelcore.postprocess; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
