"""Model bundles: postprocess params, save/load round trip, name resolution and the errors a user sees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from random_bundle import random_bundle_fields

from steelcore.paths import MODELS_DIR
from steelcore.settings import get_settings
from training import model_bundle
from training.model_bundle import (
    ModelBundle,
    PostprocessParams,
    list_bundles,
    load_bundle,
    resolve_bundle_path,
    save_bundle,
)
from training.networks import preset

CLASS_IDS = [1, 2, 3, 4]
CLASS_NAMES = {1: "pitting", 2: "inclusion", 3: "scratches", 4: "patches"}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("STEEL_MODELS_DIR", str(root))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def _fields(with_classifier: bool = True, seed: int = 0) -> dict[str, Any]:
    fields = random_bundle_fields(
        name="unit",
        description="a bundle written by a unit test",
        seed=seed,
        classifier=with_classifier,
        class_ids=CLASS_IDS,
        class_names=CLASS_NAMES,
        provenance={"classifier_run": "runs/c", "segmenter_run": "runs/s"},
    )
    fields["postprocess"] = PostprocessParams([0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.5, 0.3], [10, 20, 0, 400])
    return fields


# --- PostprocessParams -----------------------------------------------------------------------------


def test_postprocess_round_trips_through_json_text() -> None:
    params = PostprocessParams([0.1, 0.9], [0.5, 0.25], [0, 1200])
    text = json.dumps(params.to_json())
    assert PostprocessParams.from_json(text) == params
    assert PostprocessParams.from_json(json.loads(text)) == params


def test_postprocess_neutral_clears_nothing() -> None:
    params = PostprocessParams.neutral(4)
    assert params.gate_threshold == [0.0] * 4
    assert params.min_area == [0] * 4
    assert params.num_classes == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"gate_threshold": [0.5], "pixel_threshold": [0.5, 0.5], "min_area": [0]}, "lengths"),
        ({"gate_threshold": [], "pixel_threshold": [], "min_area": []}, "non-empty"),
        ({"gate_threshold": [1.5], "pixel_threshold": [0.5], "min_area": [0]}, "gate_threshold"),
        ({"gate_threshold": [0.5], "pixel_threshold": [float("nan")], "min_area": [0]}, "pixel_threshold"),
        ({"gate_threshold": [0.5], "pixel_threshold": [0.5], "min_area": [-1]}, "min_area"),
        ({"gate_threshold": [0.5], "pixel_threshold": [0.5]}, "missing keys \\['min_area'\\]"),
        ({"gate_threshold": [0.5], "pixel_threshold": [0.5], "min_area": [0], "x": 1}, "unknown keys"),
        ({"gate_threshold": 0.5, "pixel_threshold": [0.5], "min_area": [0]}, "must be a list"),
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_postprocess_rejects_malformed_input_by_name(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostprocessParams.from_json(data)


# --- save / load -------------------------------------------------------------------------------------


def test_save_then_load_gives_back_the_same_networks(tmp_path: Path) -> None:
    fields = _fields()
    path = save_bundle(tmp_path / "b", **fields)
    bundle = load_bundle(path)
    assert isinstance(bundle, ModelBundle)
    assert (bundle.name, bundle.path, bundle.class_ids, bundle.class_names) == (
        "unit",
        path,
        CLASS_IDS,
        CLASS_NAMES,
    )
    assert bundle.postprocess == fields["postprocess"]
    assert bundle.meta["provenance"] == fields["provenance"]
    assert bundle.meta["segmenter"]["config"] == fields["segmenter_config"]
    assert bundle.metrics is None
    assert bundle.classifier is not None
    for model, state in ((bundle.classifier, "classifier_state"), (bundle.segmenter, "segmenter_state")):
        assert not model.training
        loaded = model.state_dict()
        assert loaded.keys() == fields[state].keys()
        assert all(torch.equal(loaded[k], fields[state][k]) for k in loaded)
    # The files are the documented ones.
    assert sorted(p.name for p in path.iterdir()) == [
        "classifier.pt",
        "model.json",
        "postprocess.json",
        "segmenter.pt",
    ]


def test_bundle_without_classifier(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", **_fields(with_classifier=False))
    bundle = load_bundle(path)
    assert bundle.classifier is None
    assert json.loads((path / "model.json").read_text())["classifier"] is None
    assert not (path / "classifier.pt").exists()


def test_resaving_keeps_metrics_and_replaces_weights(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", **_fields(seed=0))
    (path / "metrics.json").write_text(json.dumps({"mean_dice": 0.5}))
    second = _fields(seed=1)
    save_bundle(path, **second)
    bundle = load_bundle(path)
    assert bundle.metrics == {"mean_dice": 0.5}
    key = next(iter(second["segmenter_state"]))
    assert torch.equal(bundle.segmenter.state_dict()[key], second["segmenter_state"][key])


def test_save_refuses_state_that_does_not_fit_the_config(tmp_path: Path) -> None:
    fields = _fields()
    fields["segmenter_config"] = preset("large", "segmenter")
    with pytest.raises(ValueError, match="segmenter state dict does not match"):
        save_bundle(tmp_path / "b", **fields)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_ids": [1, 2, 3]}, "class_names keys"),
        ({"class_ids": [1, 1, 2, 3]}, "unique"),
        ({"postprocess": PostprocessParams.neutral(3)}, "postprocess has 3 entries"),
        ({"classifier_state": None}, "both classifier_config and classifier_state"),
    ],
)
def test_save_rejects_inconsistent_fields(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        save_bundle(tmp_path / "b", **{**_fields(), **change})


def test_load_names_a_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", **_fields())
    meta = json.loads((path / "model.json").read_text())
    meta["segmenter"]["config"]["widths"] = [8, 8, 8, 8, 8]
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"segmenter\.pt does not match the segmenter config"):
        load_bundle(path)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", **_fields())
    (path / "postprocess.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"postprocess\.json"):
        load_bundle(path)


# --- names, listing, errors ------------------------------------------------------------------------


def test_default_name_resolves_to_the_repository_models_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEEL_MODELS_DIR", raising=False)
    get_settings.cache_clear()
    try:
        assert resolve_bundle_path("default") == MODELS_DIR / "default"
    finally:
        get_settings.cache_clear()


def test_bare_names_use_the_models_dir_and_paths_are_kept(models_dir: Path, tmp_path: Path) -> None:
    assert resolve_bundle_path("default") == models_dir / "default"
    assert resolve_bundle_path("./default") == Path("./default")
    assert resolve_bundle_path(tmp_path / "x") == tmp_path / "x"
    with pytest.raises(ValueError, match="empty"):
        resolve_bundle_path("")


def test_list_and_load_by_name(models_dir: Path) -> None:
    save_bundle(models_dir / "beta", **_fields())
    save_bundle(models_dir / "alpha", **_fields(with_classifier=False))
    (models_dir / "not-a-bundle").mkdir()
    assert list_bundles() == [models_dir / "alpha", models_dir / "beta"]
    assert load_bundle("beta").path == models_dir / "beta"
    assert model_bundle.models_dir() == models_dir


def test_missing_bundle_error_names_the_path_and_the_choices(models_dir: Path) -> None:
    save_bundle(models_dir / "alpha", **_fields(with_classifier=False))
    with pytest.raises(FileNotFoundError) as info:
        load_bundle("default")
    message = str(info.value)
    assert str(models_dir / "default") in message
    assert "alpha" in message


def test_missing_bundle_error_with_no_bundles(models_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="none"):
        load_bundle("default")
