"""Building blocks shared by the classifier and the segmenter: input handling, ResNet encoder, U-Net decoder.

Everything here is TorchScript-scriptable and ONNX-exportable (opset 17): no data-dependent Python control
flow on tensor values, only on sizes and constructor arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Total stride of the encoder (stride-2 stem + four stride-2 stages); inputs are padded to a multiple of it.
ENCODER_STRIDE = 32


def conv_bn_act(
    in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, act: bool = True
) -> nn.Sequential:
    """Convolution, batch norm and (optionally) ReLU; the convolution has no bias because BN supplies it."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def separable_bn_act(in_channels: int, out_channels: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1: about 1/9 of a dense 3x3's multiply-adds once channels are wide."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv3x3(in_channels: int, out_channels: int, stride: int, separable: bool, act: bool) -> nn.Sequential:
    if separable:
        return separable_bn_act(in_channels, out_channels, stride=stride, act=act)
    return conv_bn_act(in_channels, out_channels, 3, stride=stride, act=act)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, separable: bool = False) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, separable, act=True)
        self.conv2 = conv3x3(out_channels, out_channels, 1, separable, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn_act(in_channels, out_channels, 1, stride=stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class InputAdapter(nn.Module):
    """Normalises a [0,1] frame, resizes it to the working scale, pads it and folds pixels into channels.

    The padded size is a multiple of ``multiple * space_to_depth`` (the encoder's total stride, so that
    U-Net skips line up; 1 where nothing needs aligning).

    ``space_to_depth`` f > 1 folds each f x f block into f*f channels (pixel unshuffle): the network then
    runs at 1/f resolution without throwing away the detail a resize would average out, which matters for
    scratches one or two pixels wide.
    Padding replicates the border so that the padded strip looks like steel, not like a black edge that
    the network might call a defect.
    """

    def __init__(
        self,
        in_channels: int,
        mean: float,
        std: float,
        input_scale: float,
        space_to_depth: int = 1,
        multiple: int = ENCODER_STRIDE,
    ) -> None:
        super().__init__()
        if not 0.0 < input_scale <= 1.0:
            raise ValueError(f"input_scale must be in (0, 1], got {input_scale}")
        if std <= 0.0:
            raise ValueError(f"std must be positive, got {std}")
        if space_to_depth < 1:
            raise ValueError(f"space_to_depth must be >= 1, got {space_to_depth}")
        self.mean = float(mean)
        self.std = float(std)
        self.input_scale = float(input_scale)
        self.space_to_depth = int(space_to_depth)
        self.multiple = int(multiple) * self.space_to_depth
        self.out_channels = in_channels * self.space_to_depth**2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """The network input and the height and width it had before padding and folding.

        Sizes come from tensor shapes (not Python arithmetic on the input size) so that a traced export
        keeps them symbolic: ONNX models then accept any height and width.
        """
        x = (x - self.mean) / self.std
        if self.input_scale == 0.5:
            # The same values as the bilinear resize below (at 1/2 it samples at 2i + 0.5: the mean
            # of each 2x2 block), as a pooling that runtimes run in a fraction of a Resize's time
            # (OpenVINO: 1.0 of the classifier's 2.5 ms per frame went to the Resize).
            x = F.avg_pool2d(x, 2)
        elif self.input_scale != 1.0:
            # No antialias flag: at scale 1/2 bilinear already averages 2x2 blocks exactly, and ONNX
            # opset 17 Resize has no antialiasing to export it to.
            x = F.interpolate(
                x,
                scale_factor=self.input_scale,
                mode="bilinear",
                align_corners=False,
                recompute_scale_factor=False,
            )
        height, width = x.shape[-2], x.shape[-1]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")
        if self.space_to_depth > 1:
            x = F.pixel_unshuffle(x, self.space_to_depth)
        return x, height, width


class ResNetEncoder(nn.Module):
    """Stride-2 stem followed by four stages of basic blocks, each stage halving the resolution.

    widths = [stem, stage1, stage2, stage3, stage4]; blocks = number of basic blocks per stage.
    Returns the feature maps at strides 2, 4, 8, 16, 32 (the U-Net skips).
    """

    def __init__(
        self, in_channels: int, widths: list[int], blocks: list[int], separable: bool, stem_convs: int
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(blocks) != 4:
            raise ValueError(f"widths needs 5 entries and blocks 4, got {widths} and {blocks}")
        if min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"widths and blocks must be positive, got {widths} and {blocks}")
        stem: list[nn.Module] = [conv_bn_act(in_channels, widths[0], 3, stride=2)]
        stem += [conv_bn_act(widths[0], widths[0], 3) for _ in range(stem_convs - 1)]
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        for i in range(4):
            # The first block's separable stride-2 conv would see only one channel group per output; the
            # dense downsampling conv is cheap at the lower resolution it produces.
            layers: list[nn.Module] = [BasicBlock(widths[i], widths[i + 1], stride=2, separable=False)]
            layers += [
                BasicBlock(widths[i + 1], widths[i + 1], separable=separable) for _ in range(blocks[i] - 1)
            ]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class DecoderBlock(nn.Module):
    """U-Net step: upsample x2, concatenate the skip of that scale, two 3x3 convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, separable: bool) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(in_channels + skip_channels, out_channels, 3)
        self.conv2 = conv3x3(out_channels, out_channels, 1, separable, act=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=[skip.shape[-2], skip.shape[-1]], mode="nearest")
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class UNetDecoder(nn.Module):
    """Decoder with a skip connection at every scale, from stride 16 down to the working resolution.

    widths[i] is the width after the i-th upsampling; with 5 entries the last step reaches stride 1 and
    uses the (normalised, resized) input itself as its skip, which keeps edges a pixel or two wide.
    With 4 entries the decoder stops at stride 2.
    """

    def __init__(
        self, encoder_channels: list[int], in_channels: int, widths: list[int], separable: bool
    ) -> None:
        super().__init__()
        if not 1 <= len(widths) <= 5:
            raise ValueError(f"decoder_widths needs 1 to 5 entries, got {widths}")
        # Skips from deep to shallow: strides 16, 8, 4, 2, then the input at stride 1.
        skip_channels = [*encoder_channels[3::-1], in_channels][: len(widths)]
        blocks: list[nn.Module] = []
        previous = encoder_channels[4]
        for skip, width in zip(skip_channels, widths, strict=True):
            blocks.append(DecoderBlock(previous, skip, width, separable))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = previous
        self.output_stride = 2 ** (5 - len(widths))

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        # features: strides 2, 4, 8, 16, 32; skips taken from stride 16 back to the image.
        skips = [features[3], features[2], features[1], features[0], image]
        x = features[4]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i])
        return x
