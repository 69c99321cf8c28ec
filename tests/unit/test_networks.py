"""The shared base test every preset x task passes (forward/backward on odd sizes, save/load, export),
plus the behaviour the designs promise (config validation, full-resolution output, sub-pixel head)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.export import export_onnx, export_torchscript
from training.networks import PRESETS, TASKS, build_model, preset, resolve_config
from training.networks.resunet import SubPixelHead

# Exported outputs must match eager ones to float32 rounding (logits are O(1..10)).
EXPORT_TOLERANCE = 1e-4

CASES = [(name, task) for name in PRESETS for task in TASKS]


def _sizes(preset_name: str) -> list[tuple[int, int, int, int]]:
    sizes = [(1, 1, 200, 200), (1, 1, 100, 333)]
    if preset_name == "small":
        # A full batch of real frames only for the CPU preset; the GPU nets stay on small inputs here.
        sizes.append((2, 1, 256, 1600))
    return sizes


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, str], torch.nn.Module]:
    torch.manual_seed(0)
    return {(name, task): build_model(task, preset(name, task)) for name, task in CASES}


def _expected_shape(task: str, size: tuple[int, int, int, int]) -> tuple[int, ...]:
    batch, _, height, width = size
    return (batch, 4) if task == "classifier" else (batch, 4, height, width)


@pytest.mark.parametrize(("preset_name", "task"), CASES)
def test_forward_backward_on_odd_sizes(models: dict, preset_name: str, task: str) -> None:
    model = models[(preset_name, task)].train()
    for size in _sizes(preset_name):
        x = torch.rand(size, requires_grad=True)
        out = model(x)
        assert out.shape == _expected_shape(task, size), size
        assert torch.isfinite(out).all()
        model.zero_grad()
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), size
        assert x.grad is not None and x.grad.abs().sum() > 0, "the input must influence the output"


@pytest.mark.parametrize(("preset_name", "task"), CASES)
def test_state_dict_round_trip(models: dict, preset_name: str, task: str) -> None:
    model = models[(preset_name, task)].eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a differently initialised twin
    twin = build_model(task, preset(preset_name, task)).eval()
    x = torch.rand(1, 1, 100, 333)
    with torch.no_grad():
        assert not torch.equal(twin(x), model(x))
        twin.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(twin(x), model(x))


@pytest.mark.parametrize(("preset_name", "task"), CASES)
def test_torchscript_and_onnx_match_eager(models: dict, preset_name: str, task: str, tmp_path: Path) -> None:
    model = copy.deepcopy(models[(preset_name, task)]).eval()
    shape = (1, 1, 200, 200) if preset_name == "large" else (1, 1, 256, 1600)
    ts_diff = export_torchscript(model, tmp_path / "net.pt", shape)
    onnx_diff = export_onnx(model, tmp_path / "net.onnx", shape)
    print(
        f"{preset_name}/{task}: max |TorchScript - eager| {ts_diff:.2e}, max |ONNX - eager| {onnx_diff:.2e}"
    )
    assert ts_diff < EXPORT_TOLERANCE
    assert onnx_diff < EXPORT_TOLERANCE


def test_presets_resolve_to_themselves() -> None:
    # Presets spell out every key, so stored configs never depend on defaults.
    for name, task in CASES:
        assert resolve_config(task, PRESETS[name][task]) == PRESETS[name][task]


def test_preset_returns_an_independent_copy() -> None:
    config = preset("small", "segmenter")
    config["widths"].append(1)
    assert PRESETS["small"]["segmenter"]["widths"] != config["widths"]


@pytest.mark.parametrize(
    ("task", "change", "message"),
    [
        ("segmenter", {"colour": True}, "colour"),
        ("classifier", {"decoder_widths": [8]}, "decoder_widths"),
        ("segmenter", {"dropout": 0.5}, "dropout"),
        ("segmenter", {"input_scale": 0.0}, "input_scale"),
        ("segmenter", {"input_scale": 1.5}, "input_scale"),
        ("segmenter", {"widths": [8, 8, 8]}, "widths"),
        ("segmenter", {"widths": 8}, "widths"),
        ("segmenter", {"space_to_depth": 0}, "space_to_depth"),
        ("segmenter", {"decoder_widths": []}, "decoder_widths"),
        ("classifier", {"std": 0.0}, "std"),
    ],
)
def test_bad_configs_are_rejected_by_name(task: str, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(task, {**preset("small", task), **change})  # type: ignore[arg-type]


def test_missing_required_key_is_named() -> None:
    config = preset("small", "segmenter")
    del config["decoder_widths"]
    with pytest.raises(ValueError, match="decoder_widths"):
        build_model("segmenter", config)
    with pytest.raises(ValueError, match="task"):
        build_model("detector", config)  # type: ignore[arg-type]


def test_optional_keys_take_their_defaults() -> None:
    config = {k: v for k, v in preset("small", "classifier").items() if k not in ("mean", "std", "separable")}
    assert resolve_config("classifier", config)["separable"] is False
    build_model("classifier", config)


def test_subpixel_head_starts_as_nearest_neighbour_upsampling() -> None:
    head = SubPixelHead(in_channels=8, num_classes=3, upscale=4)
    out = head(torch.randn(2, 8, 5, 7))
    assert out.shape == (2, 3, 20, 28)
    blocks = out.reshape(2, 3, 5, 4, 7, 4)
    # Every 4x4 block is constant at initialisation: no checkerboard to unlearn.
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))


def test_segmenter_output_changes_within_a_single_full_resolution_pixel() -> None:
    """The small preset runs at 128x800 but must still answer per full-resolution pixel."""
    model = build_model("segmenter", preset("small", "segmenter")).eval()
    x = torch.rand(1, 1, 64, 320)
    # Neighbouring output pixels within one folded 2x2 block differ (no nearest-neighbour blockiness
    # once the head's sub-pixel kernels differ, which training makes them do).
    for module in model.head.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.1)
    with torch.no_grad():
        out = model(x)
    assert (out[..., 0::2, :] - out[..., 1::2, :]).abs().max() > 1e-3
    assert (out[..., :, 0::2] - out[..., :, 1::2]).abs().max() > 1e-3


def _fit_fine_scratches(config: dict, steps: int = 80) -> float:
    """Dice on class 3 after overfitting two frames of 1 px scratches lying 1 px apart."""
    torch.manual_seed(0)
    model = build_model("segmenter", config).train()
    image = torch.full((2, 1, 64, 256), 0.4)
    target = torch.zeros(2, 4, 64, 256)
    for row in (29, 31, 33):  # bright horizontal scratches, odd rows
        image[0, 0, row, 20:220] = 0.8
        target[0, 2, row, 20:220] = 1.0
    for col in (101, 103):  # dark vertical ones, odd columns
        image[1, 0, 10:50, col] = 0.1
        target[1, 2, 10:50, col] = 1.0
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    weight = torch.tensor(20.0)
    for _ in range(steps):
        optimiser.zero_grad()
        F.binary_cross_entropy_with_logits(model(image), target, pos_weight=weight).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.sigmoid(model(image))[:, 2] > 0.5
    truth = target[:, 2] > 0.5
    return float(2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))


def test_small_segmenter_resolves_one_pixel_scratches() -> None:
    """Capacity check of the speed design: folding + sub-pixel head keep full-resolution detail."""
    dice = _fit_fine_scratches(preset("small", "segmenter"))
    assert dice > 0.9, f"Dice {dice:.3f} on 1 px scratches"


def test_resizing_to_half_resolution_cannot_resolve_them() -> None:
    """Why the small preset folds pixels instead of resizing: the same net on a resized input blurs
    neighbouring scratches into one band (this is the check above failing for the simpler design)."""
    config = {**preset("small", "segmenter"), "input_scale": 0.5, "space_to_depth": 1}
    dice = _fit_fine_scratches(config)
    assert dice < 0.85, f"Dice {dice:.3f}"


@pytest.mark.parametrize("shape", [(256, 1600), (200, 200), (65, 161)])
def test_half_scale_input_is_the_bilinear_resize_it_replaces(shape: tuple[int, int]) -> None:
    """InputAdapter at input_scale 0.5 pools 2x2 blocks: the values bilinear resizing gives, odd sizes too."""
    from training.networks.blocks import InputAdapter

    adapter = InputAdapter(1, mean=0.4, std=0.2, input_scale=0.5, space_to_depth=1)
    x = torch.rand(2, 1, *shape)
    got, height, width = adapter(x)
    expected = F.interpolate(
        (x - 0.4) / 0.2, scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )
    assert (height, width) == tuple(expected.shape[-2:])
    torch.testing.assert_close(got[..., :height, :width], expected, rtol=0, atol=1e-5)
