"""The Triton repository written by training.triton_export: configs, wiring, threads, exported networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from random_bundle import save_random_bundle

from steelcore.paths import TRITON_REPOSITORY
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from training import triton_export
from training.inference import predict_probs
from training.model_bundle import PostprocessParams, load_bundle

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

CPU_CORES = 2  # the team machine; (instances x torch threads) above it cut throughput to a quarter
TORCH_MODELS = ("classifier", "segmenter")
PARAMS = PostprocessParams([0.3, 0.4, 0.5, 0.6], [0.45, 0.5, 0.55, 0.6], [0, 10, 20, 30])


def make_bundle(path: Path, *, classifier: bool = True, seed: int = 0) -> Path:
    """A small-preset bundle with random weights (the shipped model is trained separately)."""
    return save_random_bundle(
        path,
        name="random-test",
        description="random weights for repository tests",
        seed=seed,
        classifier=classifier,
        postprocess=PARAMS,
    )


def parse_config(path: Path) -> object:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def load_configs(repo: Path) -> dict[str, object]:
    return {p.parent.name: parse_config(p) for p in sorted(repo.glob("*/config.pbtxt"))}


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "random-test")


@pytest.fixture(scope="module")
def repo(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return triton_export.write_repository(load_bundle(bundle_path), tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def configs(repo: Path) -> dict[str, object]:
    return load_configs(repo)


def tensors(entries: object) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in entries}  # type: ignore[attr-defined]


def check_ensemble_wiring(configs: dict[str, object], ensemble_name: str) -> None:
    """Every step's mapped tensors exist with the dtype and dims of the tensor they are wired to."""
    ensemble = configs[ensemble_name]
    available = tensors(ensemble.input)  # type: ignore[attr-defined]
    steps = ensemble.ensemble_scheduling.step  # type: ignore[attr-defined]
    assert steps, "ensemble has no steps"
    for step in steps:
        model = configs[step.model_name]
        assert model.max_batch_size >= ensemble.max_batch_size, step.model_name  # type: ignore[attr-defined]
        model_inputs = tensors(model.input)  # type: ignore[attr-defined]
        model_outputs = tensors(model.output)  # type: ignore[attr-defined]
        required = {t.name for t in model.input if not t.optional}  # type: ignore[attr-defined]
        assert required <= set(step.input_map), f"{step.model_name} inputs not all mapped"
        for model_input, tensor in step.input_map.items():
            assert tensor in available, f"{step.model_name} reads {tensor!r} before any step writes it"
            assert model_inputs[model_input] == available[tensor], (step.model_name, model_input)
        for model_output, tensor in step.output_map.items():
            assert model_output in model_outputs, (step.model_name, model_output)
            available[tensor] = model_outputs[model_output]
    for name, spec in tensors(ensemble.output).items():  # type: ignore[attr-defined]
        assert available.get(name) == spec, f"ensemble output {name} is not produced as declared"


def test_every_config_parses_and_is_versioned(repo: Path, configs: dict[str, object]) -> None:
    assert set(configs) == set(triton_export.MODELS)
    for name, config in configs.items():
        assert config.name == name  # type: ignore[attr-defined]
        # Explicit versions: a candidate copied in beside version 1 is not served until listed.
        assert list(config.version_policy.specific.versions) == [1]  # type: ignore[attr-defined]
        assert (repo / name / "1").is_dir()


def test_ensemble_steps_agree_on_names_dims_dtypes(configs: dict[str, object]) -> None:
    ensemble = configs["steel_ensemble"]
    assert ensemble.platform == "ensemble"  # type: ignore[attr-defined]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [  # type: ignore[attr-defined]
        "classifier",
        "segmenter",
        "postprocess",
    ]
    check_ensemble_wiring(configs, "steel_ensemble")
    # Pinned, never -1 ("latest" would be a shadow candidate loaded beside production).
    steps = configs["steel_ensemble"].ensemble_scheduling.step  # type: ignore[attr-defined]
    assert [s.model_version for s in steps] == [1, 1, 1]


def test_ensemble_interface(configs: dict[str, object]) -> None:
    types = model_config_pb2.DataType
    ensemble = configs["steel_ensemble"]
    assert tensors(ensemble.input) == {"FRAMES": (types.TYPE_UINT8, (FRAME_HEIGHT, FRAME_WIDTH))}  # type: ignore[attr-defined]
    assert tensors(ensemble.output) == {  # type: ignore[attr-defined]
        "PROBS": (types.TYPE_FP32, (4,)),
        "PIXEL_COUNTS": (types.TYPE_INT64, (4,)),
        "RLE": (types.TYPE_STRING, (4,)),
        "MODEL_VERSION": (types.TYPE_INT32, (1,)),
    }
    cascade = configs["steel_cascade"]
    assert cascade.backend == "python"  # type: ignore[attr-defined]
    assert tensors(cascade.input) == tensors(ensemble.input)  # type: ignore[attr-defined]
    assert tensors(cascade.output) == tensors(ensemble.output)  # type: ignore[attr-defined]
    assert cascade.max_batch_size == ensemble.max_batch_size  # type: ignore[attr-defined]


def test_dynamic_batching_with_a_queue_delay(configs: dict[str, object]) -> None:
    for name in ("classifier", "segmenter", "postprocess", "steel_cascade"):
        config = configs[name]
        assert config.HasField("dynamic_batching"), name  # type: ignore[attr-defined]
        batching = config.dynamic_batching  # type: ignore[attr-defined]
        assert 0 <= batching.max_queue_delay_microseconds <= 10_000, name
        assert all(b <= config.max_batch_size for b in batching.preferred_batch_size)  # type: ignore[attr-defined]
    for name in TORCH_MODELS:  # the networks wait a little so concurrent frames share a pass
        assert configs[name].dynamic_batching.max_queue_delay_microseconds > 0  # type: ignore[attr-defined]


def torch_thread_budget(configs: dict[str, object]) -> int:
    """Instances x threads of the networks: torch threads (torchscript) or OpenVINO threads."""
    total = 0
    for name in set(TORCH_MODELS) & set(configs):
        config = configs[name]
        parameters = config.parameters  # type: ignore[attr-defined]
        key = "threads" if "threads" in parameters else "torch_threads"
        threads = int(parameters[key].string_value)
        instances = sum(g.count for g in config.instance_group)  # type: ignore[attr-defined]
        assert all(g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in config.instance_group)  # type: ignore[attr-defined]
        total += instances * threads
    return total


def check_openvino_threads(configs: dict[str, object]) -> None:
    """One instance per OpenVINO network, each with at most a thread per core: their pools do not
    pin and the classifier is short, so the two networks share the cores (ServingLayout)."""
    for name in TORCH_MODELS:
        assert torch_thread_budget({name: configs[name]}) <= CPU_CORES, name
        assert sum(g.count for g in configs[name].instance_group) == 1, name  # type: ignore[attr-defined]


def test_instances_times_threads_fit_the_cores(configs: dict[str, object]) -> None:
    # The ensemble runs classifier and segmenter side by side, so their budgets add up.
    assert torch_thread_budget(configs) <= CPU_CORES


def test_thresholds_come_from_the_bundle(repo: Path, bundle_path: Path) -> None:
    expected = json.loads((bundle_path / "postprocess.json").read_text())
    for model in ("postprocess", "steel_cascade"):
        assert json.loads((repo / model / "1" / "postprocess.json").read_text()) == expected
    manifest = json.loads((repo / triton_export.MANIFEST).read_text())
    assert manifest["bundle"] == "random-test" and manifest["format"] == "torchscript"


def test_torchscript_networks_equal_predict_probs(repo: Path, bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    frames = np.random.default_rng(3).integers(0, 256, (2, FRAME_HEIGHT, FRAME_WIDTH), dtype=np.uint8)
    cls_ref, seg_ref = predict_probs(bundle, frames)
    for name, reference in (("classifier", cls_ref), ("segmenter", seg_ref)):
        module = torch.jit.load(str(repo / name / "1" / triton_export.TORCHSCRIPT_FILES[name]))
        with torch.inference_mode():
            served = module(torch.from_numpy(frames)).numpy()
        assert served.shape == reference.shape
        if name == "segmenter":  # uint8 codes round(255 p): the same torch ops as predict_probs
            assert served.dtype == np.uint8
            np.testing.assert_array_equal(served, np.round(reference.astype(np.float64) * 255))
        else:
            np.testing.assert_allclose(served, reference, rtol=0, atol=1e-6)


def test_python_models_have_their_model_py(repo: Path, configs: dict[str, object]) -> None:
    for name, config in configs.items():
        if config.backend == "python":  # type: ignore[attr-defined]
            assert (repo / name / "1" / "model.py").is_file(), name


def test_gpu_kind_is_selectable(bundle_path: Path, tmp_path: Path) -> None:
    repo = triton_export.write_repository(bundle_path, tmp_path / "gpu", "torchscript", "gpu")
    configs = load_configs(repo)
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    for name in TORCH_MODELS:
        assert [g.kind for g in configs[name].instance_group] == [gpu]  # type: ignore[attr-defined]
    check_ensemble_wiring(configs, "steel_ensemble")


def test_bundle_without_classifier(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "seg-only", classifier=False)
    repo = triton_export.write_repository(bundle, tmp_path / "repo")
    configs = load_configs(repo)
    assert "classifier" not in configs
    assert [s.model_name for s in configs["steel_ensemble"].ensemble_scheduling.step] == [  # type: ignore[attr-defined]
        "segmenter",
        "postprocess",
    ]
    check_ensemble_wiring(configs, "steel_ensemble")
    assert configs["steel_cascade"].parameters["classifier_model"].string_value == ""  # type: ignore[attr-defined]


def test_rewriting_replaces_only_the_model_folders(bundle_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    (out / "classifier" / "2").mkdir(parents=True)
    (out / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "notes.txt").write_text("kept")
    triton_export.write_repository(bundle_path, out)
    assert not (out / "classifier" / "2").exists(), "a stale version folder survived"
    assert (out / "notes.txt").read_text() == "kept"
    assert not list(tmp_path.glob(".repo-writing-*")), "the staging folder was left behind"


def test_a_failed_export_leaves_the_previous_repository(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = triton_export.write_repository(bundle_path, tmp_path / "repo")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def fail(network: torch.nn.Module, path: Path) -> Path:
        raise RuntimeError("cannot script")

    monkeypatch.setattr(triton_export, "export_torchscript_network", fail)
    with pytest.raises(RuntimeError, match="cannot script"):
        triton_export.write_repository(bundle_path, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not list(tmp_path.glob(".repo-writing-*"))


@pytest.mark.parametrize(("fmt", "kind"), [("tensorrt", "cpu"), ("onnx", "tpu")])
def test_bad_format_or_kind(bundle_path: Path, tmp_path: Path, fmt: str, kind: str) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        triton_export.write_repository(bundle_path, tmp_path, fmt, kind)  # type: ignore[arg-type]


def test_committed_repository_is_complete_and_consistent() -> None:
    """triton_models/ holds every model's model.py; its configs, once exported, obey the same rules."""
    for name in ("classifier", "segmenter", "postprocess", "steel_cascade"):
        assert (TRITON_REPOSITORY / name / "1" / "model.py").is_file(), name
    # classifier and segmenter run one generic network model.py: the classifier's links to the segmenter's.
    assert (TRITON_REPOSITORY / "classifier/1/model.py").resolve() == (
        TRITON_REPOSITORY / "segmenter/1/model.py"
    ).resolve()
    assert (TRITON_REPOSITORY / "classifier/1/model.py").read_text() == (
        TRITON_REPOSITORY / "segmenter/1/model.py"
    ).read_text()
    configs = load_configs(TRITON_REPOSITORY)
    if "steel_ensemble" not in configs:
        pytest.skip(
            "triton_models/ has no configs yet: run `steel export --model default --repo triton_models`"
        )
    check_ensemble_wiring(configs, "steel_ensemble")
    check_openvino_threads(configs)
    # The shipped CPU repository runs the networks on OpenVINO (issue 14): ONNX files, no TorchScript.
    manifest = json.loads((TRITON_REPOSITORY / triton_export.MANIFEST).read_text())
    assert manifest["format"] == "openvino" and manifest["kind"] == "cpu"
    for name in TORCH_MODELS:
        parameters = configs[name].parameters  # type: ignore[attr-defined]
        assert parameters["runtime"].string_value == "openvino"
        assert (TRITON_REPOSITORY / name / "1" / parameters["model_file"].string_value).is_file()
        assert not list((TRITON_REPOSITORY / name / "1").glob("*.pt")), "a stale TorchScript file"


@pytest.fixture(scope="module")
def openvino_repo(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return triton_export.write_repository(bundle_path, tmp_path_factory.mktemp("ov-repo"), "openvino")


def test_openvino_repository_configs(openvino_repo: Path) -> None:
    configs = load_configs(openvino_repo)
    assert set(configs) == set(triton_export.MODELS)
    check_ensemble_wiring(configs, "steel_ensemble")
    check_openvino_threads(configs)
    for name in TORCH_MODELS:
        config = configs[name]
        assert config.backend == "python"  # type: ignore[attr-defined]
        parameters = {k: v.string_value for k, v in config.parameters.items()}  # type: ignore[attr-defined]
        assert parameters["runtime"] == "openvino" and parameters["precision"] == "auto"
        assert parameters["model_file"] == triton_export.ONNX_FILE
        assert (openvino_repo / name / "1" / triton_export.ONNX_FILE).is_file()
        assert (openvino_repo / name / "1" / "model.py").read_text() == (
            TRITON_REPOSITORY / "segmenter/1/model.py"
        ).read_text()
        assert config.dynamic_batching.max_queue_delay_microseconds > 0  # type: ignore[attr-defined]
    manifest = json.loads((openvino_repo / triton_export.MANIFEST).read_text())
    assert manifest["format"] == "openvino" and manifest["kind"] == "cpu"


@pytest.mark.openvino
def test_openvino_repository_networks_equal_predict_probs(openvino_repo: Path, bundle_path: Path) -> None:
    """The files the python model compiles, at f32, give eager torch's probabilities (the
    segmenter's uint8 codes: the same, give or take one)."""
    pytest.importorskip("openvino")
    from steelcore.cpu_runtime import OpenVINONetwork
    from steelcore.postprocess import probabilities

    bundle = load_bundle(bundle_path)
    frames = np.random.default_rng(5).integers(0, 256, (2, FRAME_HEIGHT, FRAME_WIDTH), dtype=np.uint8)
    cls_ref, seg_ref = predict_probs(bundle, frames)
    for name, reference in (("classifier", cls_ref), ("segmenter", seg_ref)):
        network = OpenVINONetwork(openvino_repo / name / "1" / triton_export.ONNX_FILE, 1, "f32")
        atol = 1e-5 if name == "classifier" else 1 / 255 + 1e-6  # codes: a near-tie may round up
        np.testing.assert_allclose(probabilities(network(frames)), reference, rtol=0, atol=atol)


def test_openvino_is_a_cpu_format(bundle_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        triton_export.write_repository(bundle_path, tmp_path, "openvino", "gpu")
