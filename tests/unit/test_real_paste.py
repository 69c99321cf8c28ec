"""Real defects pasted between training frames (training.real_paste) and their place in the folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tiny_datasets import BACKGROUND, DEFECT_GREY, make_kaggle

from training.cross_validation import plan_folds
from training.datasets import open_dataset
from training.mixed_data import open_mixed
from training.real_paste import RealDefectPaste

NAMES = [f"f{k:02d}.jpg" for k in range(10)]
ALWAYS = (1.0, 1.0, 1.0, 1.0)


def test_pasted_defects_are_real_defect_pixels_labelled_with_their_class(tmp_path: Path) -> None:
    make_kaggle(tmp_path, NAMES)
    real = open_dataset(tmp_path, "all")
    pasted = RealDefectPaste(real, copies=2, seed=0, frequencies=ALWAYS)
    added_somewhere = 0
    for index in range(len(pasted)):
        image, masks, image_id = pasted[index]
        frame = pasted.source_frame(index)
        real_image, real_masks, _ = real[frame]
        assert image_id.startswith(real.image_ids[frame])
        assert (masks >= real_masks).all(), "a real label was lost"
        new = masks.astype(bool) & ~real_masks.astype(bool)
        added_somewhere += int(new.any())
        # Donor defects are DEFECT_GREY on BACKGROUND; the brightness shift is 0 on this texture.
        core = new.any(axis=0)
        if core.any():
            assert np.median(image[core]) > (BACKGROUND + DEFECT_GREY) / 2
        assert (image[~core] == real_image[~core]).mean() > 0.97, "pasting changed the frame elsewhere"
        again_image, again_masks, _ = pasted[index]
        assert (again_image == image).all() and (again_masks == masks).all(), "variants must be repeatable"
    assert added_somewhere >= len(pasted) // 2


def test_a_frame_is_never_its_own_donor(tmp_path: Path) -> None:
    make_kaggle(tmp_path, NAMES)
    real = open_dataset(tmp_path, "all")
    presence = real.class_presence()
    # One frame with pitting (class 1) and the clean last frame: only the clean one can receive pitting.
    pitted = next(i for i in range(len(real)) if presence[i, 0] and presence[i].sum() == 1)
    pair = real.subset([pitted, len(real) - 1])
    pasted = RealDefectPaste(pair, copies=4, seed=0, frequencies=ALWAYS)
    for index in range(len(pasted)):
        _image, masks, image_id = pasted[index]
        receiver = pasted.source_frame(index)
        _real_image, real_masks, _ = pair[receiver]
        gained = (masks[0].astype(bool) & ~real_masks[0].astype(bool)).any()
        if receiver == 0:
            assert not gained, f"{image_id} got pitting from itself"
        else:
            assert gained, f"{image_id} (clean) got no pitting from the pitted frame"


def test_folds_paste_only_their_own_training_frames(tmp_path: Path) -> None:
    make_kaggle(tmp_path / "real", NAMES)
    mixed = open_mixed([str(tmp_path / "real")], "all")
    plans, assignment = plan_folds(mixed, 0, folds=3, seed=0, real_paste=1.0)
    for plan in plans:
        pasted = plan.train.parts[-1]
        assert isinstance(pasted, RealDefectPaste)
        held = {mixed.parts[0].image_ids[i] for i in plan.heldout_indices}
        donors = {pasted.real.image_ids[d.frame] for per_class in pasted.donors for d in per_class}
        receivers = {image_id.split("#")[0] for image_id in pasted.image_ids}
        assert donors and not donors & held
        assert receivers and not receivers & held
    assert len(set(assignment.tolist())) == 3
