"""training.datasets: both layouts, splits, lazy masks, errors, and the real shared data."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_datasets import BACKGROUND, DEFECT_GREY, make_kaggle, make_pairs

from steelcore.paths import NEU_SEG_DIR, SEVERSTAL_SAMPLE_DIR
from steelcore.severstal import CLASS_IDS, CLASS_NAMES
from training.datasets import in_val_split, open_dataset

KAGGLE_NAMES = [f"{i:09x}.png" for i in range(5)] + ["00000000f.jpg"]


@pytest.fixture()
def kaggle(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, make_kaggle(tmp_path, KAGGLE_NAMES)


def test_kaggle_samples_match_written_masks(kaggle: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, truth = kaggle
    ds = open_dataset(root, "all")
    assert ds.layout == "kaggle"
    assert sorted(ds.image_ids) == sorted(KAGGLE_NAMES)
    assert ds.class_ids == list(CLASS_IDS)
    assert ds.class_names == CLASS_NAMES
    for i in range(len(ds)):
        image, masks, image_id = ds[i]
        assert image.dtype == np.uint8 and image.shape == (64, 160)
        assert masks.dtype == np.uint8 and masks.shape == (4, 64, 160)
        np.testing.assert_array_equal(masks, truth[image_id])
        if image_id.endswith(".png"):  # lossless: the painted defects are exactly the masks
            np.testing.assert_array_equal(image == DEFECT_GREY, masks.any(axis=0))
            assert set(np.unique(image)) <= {BACKGROUND, DEFECT_GREY}
    # The last image has no row in train.csv: defect-free.
    assert not ds[ds.image_ids.index("00000000f.jpg")][1].any()


def test_kaggle_presence_without_decoding_matches_masks(kaggle: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, truth = kaggle
    ds = open_dataset(root)
    expected = np.array([truth[i].any(axis=(1, 2)) for i in ds.image_ids])
    np.testing.assert_array_equal(ds.class_presence(), expected)
    sub = ds.subset([2, 0])
    assert sub.image_ids == [ds.image_ids[2], ds.image_ids[0]]
    np.testing.assert_array_equal(sub.class_presence(), expected[[2, 0]])
    assert len(ds) == len(KAGGLE_NAMES)  # subset leaves the original alone


def test_kaggle_splits_partition_and_are_stable(tmp_path: Path) -> None:
    names = [f"{i:09x}.png" for i in range(40)]
    make_kaggle(tmp_path, names, shape=(32, 64))
    train, val, every = (open_dataset(tmp_path, s) for s in ("train", "val", "all"))
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert sorted(train.image_ids + val.image_ids) == sorted(every.image_ids) == sorted(names)
    before = set(val.image_ids)
    # More images must not move the old ones between splits (the split hashes each id on its own).
    shutil.rmtree(tmp_path / "train_images")
    make_kaggle(tmp_path, names + [f"x{i:08x}.png" for i in range(40)], shape=(32, 64))
    after = set(open_dataset(tmp_path, "val").image_ids)
    assert after & set(names) == before


def test_val_fraction_is_about_ten_percent() -> None:
    ids = [f"{i:09x}.jpg" for i in range(20_000)]
    share = sum(in_val_split(i) for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert sum(in_val_split(i, 0.5) for i in ids) / len(ids) == pytest.approx(0.5, abs=0.02)


def test_any_frame_size_and_bad_labels(tmp_path: Path) -> None:
    truth = make_kaggle(tmp_path, ["a.png", "b.png"], shape=(40, 72))
    ds = open_dataset(tmp_path)
    np.testing.assert_array_equal(ds[0][1], truth[ds.image_ids[0]])
    # A run past the end of the frame must name the image, not fail deep inside numpy.
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.png,1,2800 100\n")
    with pytest.raises(ValueError, match=r"a\.png"):
        open_dataset(tmp_path)[0]


def test_unreadable_image_is_a_clear_error(tmp_path: Path) -> None:
    make_kaggle(tmp_path, ["a.png", "b.png"], shape=(32, 64))
    (tmp_path / "train_images" / "a.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        open_dataset(tmp_path)[0]


def test_folder_in_neither_layout_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a dataset"):
        open_dataset(tmp_path)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(ValueError, match="no image folder"):
        open_dataset(tmp_path)
    with pytest.raises(ValueError, match="split"):
        make_kaggle(tmp_path / "k", ["a.png"], shape=(32, 64))
        open_dataset(tmp_path / "k", "test")


def test_pairs_layout_one_channel_per_class(tmp_path: Path) -> None:
    labels = make_pairs(tmp_path, ["000001", "000002", "000003"], ["000004", "000005"])
    ds = open_dataset(tmp_path, "train")
    assert ds.layout == "pairs"
    assert ds.class_ids == [1, 2, 3]
    assert ds.class_names == {1: "inclusion", 2: "patches", 3: "scratches"}
    assert ds.image_ids == ["000001", "000002", "000003"]
    assert open_dataset(tmp_path, "val").image_ids == ["000004", "000005"]
    assert len(open_dataset(tmp_path, "all")) == 5
    for image, masks, image_id in ds:
        assert image.shape == (48, 48) and image.dtype == np.uint8  # 3-channel file read as grey
        for k, class_id in enumerate(ds.class_ids):
            np.testing.assert_array_equal(masks[k], labels[image_id] == class_id)
        np.testing.assert_array_equal(image == DEFECT_GREY, labels[image_id] > 0)
    expected = np.array([[(labels[i] == c).any() for c in (1, 2, 3)] for i in ds.image_ids])
    np.testing.assert_array_equal(ds.class_presence(), expected)


def test_pairs_layout_errors(tmp_path: Path) -> None:
    make_pairs(tmp_path, ["000001"], ["000002"])
    cv2.imwrite(str(tmp_path / "masks" / "000001.png"), np.full((48, 48), 7, dtype=np.uint8))
    with pytest.raises(ValueError, match="label 7"):
        open_dataset(tmp_path, "train")[0]
    (tmp_path / "val.txt").write_text("000002\n999999\n")
    with pytest.raises(ValueError, match="999999"):
        open_dataset(tmp_path, "val")
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(ValueError, match=r"classes\.txt"):
        open_dataset(tmp_path, "val")


@pytest.mark.skipif(not NEU_SEG_DIR.is_dir(), reason="shared NEU-Seg data not present")
def test_real_neu_seg_listing() -> None:
    train, val = open_dataset(NEU_SEG_DIR, "train"), open_dataset(NEU_SEG_DIR, "val")
    assert (len(train), len(val)) == (3129, 894)
    assert len(open_dataset(NEU_SEG_DIR, "all")) == 3129 + 894
    assert train.class_names == {1: "inclusion", 2: "patches", 3: "scratches"}
    image, masks, _ = val[0]
    assert image.shape == (200, 200) and masks.shape == (3, 200, 200)
    assert masks.any()


@pytest.mark.skipif(not SEVERSTAL_SAMPLE_DIR.is_dir(), reason="shared Severstal sample not present")
def test_real_severstal_frames() -> None:
    ds = open_dataset(SEVERSTAL_SAMPLE_DIR)
    assert len(ds) == 4
    presence = dict(zip(ds.image_ids, ds.class_presence().tolist(), strict=True))
    # From the sample's train.csv rows: 000789191 has none, 002fc4e19 classes 1+2, 03db6bbc3 3+4.
    assert presence["000789191.png"] == [False] * 4
    assert presence["002fc4e19.png"] == [True, True, False, False]
    assert presence["03db6bbc3.jpg"] == [False, False, True, True]
    image, masks, _ = ds[ds.image_ids.index("03db6bbc3.jpg")]
    assert image.shape == (256, 1600) and masks.shape == (4, 256, 1600)
    assert masks[2].any() and not masks[0].any()
