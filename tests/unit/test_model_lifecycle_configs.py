"""stack.model_lifecycle and its parts, no Triton: config rewriting, bundle checks, all-or-nothing loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stack import model_lifecycle as ml
from stack.bundle_signature import bundle_signature, check_compatible
from stack.lifecycle_errors import BadCandidate, LoadFailed
from stack.version_configs import pin_ensemble, pinned_version, served_versions, set_versions
from steelcore.paths import TRITON_REPOSITORY
from steelcore.settings import Settings
from steelcore.triton.model_names import ENSEMBLE, VERSIONED_MODELS

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(text: str) -> object:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def committed(model: str) -> str:
    return (TRITON_REPOSITORY / model / "config.pbtxt").read_text()


@pytest.mark.parametrize("model", VERSIONED_MODELS)
def test_set_versions_rewrites_the_committed_configs_and_nothing_else(model: str) -> None:
    before = committed(model)
    after = set_versions(before, [3, 1, 3])
    assert list(parse(after).version_policy.specific.versions) == [1, 3]  # type: ignore[attr-defined]
    assert served_versions(after) == [1, 3]
    # Everything but the policy line is untouched.
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and "version_policy" in changed[0][0]
    assert set_versions(after, [1]) == before


def test_set_versions_adds_a_missing_policy_and_refuses_nonsense() -> None:
    text = 'name: "postprocess"\nbackend: "python"\nmax_batch_size: 8\ninput [ ]\n'
    added = set_versions(text, [2])
    assert served_versions(added) == [2]
    assert added.index("max_batch_size") < added.index("version_policy") < added.index("input")
    with pytest.raises(ValueError):
        set_versions(text, [])
    with pytest.raises(ValueError):
        set_versions(text, [0])


def test_a_latest_policy_lists_no_versions() -> None:
    assert served_versions("version_policy: { latest: { num_versions: 1 } }\n") == []


def test_pin_ensemble_pins_every_step() -> None:
    before = committed(ENSEMBLE)
    assert pinned_version(before) == 1
    after = pin_ensemble(before, 7)
    steps = parse(after).ensemble_scheduling.step  # type: ignore[attr-defined]
    assert [s.model_version for s in steps] == [7, 7, 7]
    assert pinned_version(after) == 7
    assert pinned_version(after.replace("model_version: 7", "model_version: 2", 1)) is None
    with pytest.raises(ValueError):
        pin_ensemble('name: "x"\n', 2)


def _bundle(root: Path, name: str, **meta: object) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "model.json").write_text(json.dumps({"class_ids": [1, 2, 3, 4], "classifier": {}, **meta}))


def test_bundle_signature_and_compatibility(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    _bundle(tmp_path, "prod")
    _bundle(tmp_path, "wide", input_shape=[256, 800])
    _bundle(tmp_path, "three", class_ids=[1, 2, 3])
    _bundle(tmp_path, "nogate", classifier=None)
    prod = bundle_signature("prod", settings)
    assert prod.input_shape == "256x1600" and prod.class_ids == (1, 2, 3, 4) and prod.has_classifier
    check_compatible(bundle_signature("prod", settings), prod)
    for name, words in (("wide", "256x800"), ("three", "classes"), ("nogate", "classifier")):
        with pytest.raises(BadCandidate, match=words) as info:
            check_compatible(bundle_signature(name, settings), prod)
        assert info.value.exit_code == 3
    with pytest.raises(BadCandidate, match=r"no model bundle 'missing'.*prod"):
        bundle_signature("missing", settings)
    with pytest.raises(BadCandidate):
        bundle_signature("../prod", settings)


class FlakyTriton:
    """Model control that fails loading one model while a given text is in its config."""

    def __init__(self, repo: Path, fail_model: str, fail_when: str) -> None:
        self.repo, self.fail_model, self.fail_when = repo, fail_model, fail_when
        self.loads: list[str] = []

    def load_model(self, model_name: str) -> None:
        self.loads.append(model_name)
        text = (self.repo / model_name / "config.pbtxt").read_text()
        if model_name == self.fail_model and self.fail_when in text:
            raise RuntimeError(f"failed to load '{model_name}' version 2: broken file")

    def unload_model(self, model_name: str) -> None:
        raise AssertionError("the lifecycle reloads with fewer versions, it never unloads a model")


def _repo_configs(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for model in (*VERSIONED_MODELS, ENSEMBLE):
        (repo / model).mkdir(parents=True)
        (repo / model / "config.pbtxt").write_text(committed(model))
    return repo


def test_a_failed_load_restores_every_config_and_reloads_them(tmp_path: Path) -> None:
    repo = _repo_configs(tmp_path)
    before = {m: (repo / m / "config.pbtxt").read_text() for m in (*VERSIONED_MODELS, ENSEMBLE)}
    triton = FlakyTriton(repo, "postprocess", "[ 1, 2 ]")
    life = ml.Lifecycle(engine=None, repository=repo, triton=triton, settings=Settings(), say=lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(LoadFailed, match=r"postprocess.*broken file") as info:
        life._apply([1, 2], 1)
    assert info.value.exit_code == 1
    assert {m: (repo / m / "config.pbtxt").read_text() for m in before} == before
    # Loaded in order up to the failure, then the same models reloaded from the restored files.
    assert triton.loads == [
        "classifier",
        "segmenter",
        "postprocess",
        "classifier",
        "segmenter",
        "postprocess",
    ]
    assert life.serving_state() == ([1], 1)


def test_apply_loads_python_models_before_the_ensemble_and_skips_unchanged(tmp_path: Path) -> None:
    repo = _repo_configs(tmp_path)
    triton = FlakyTriton(repo, "", "")
    life = ml.Lifecycle(engine=None, repository=repo, triton=triton, settings=Settings(), say=lambda _: None)  # type: ignore[arg-type]
    life._apply([1, 2], 1)
    assert triton.loads == ["classifier", "segmenter", "postprocess", "steel_cascade"]
    triton.loads.clear()
    life._apply([1, 2], 2)  # the switch: only the ensemble changes
    assert triton.loads == ["steel_ensemble"]
    assert life.serving_state() == ([1, 2], 2)
