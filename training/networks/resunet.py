"""ResUNet segmenter: ResNet encoder, U-Net decoder with a skip at every scale, one logit map per class."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.networks.blocks import InputAdapter, ResNetEncoder, UNetDecoder

# Initial probability of "defect" per pixel: defects cover a few percent of a frame, and starting there
# keeps the first batches from flooding the loss with confident false positives.
HEAD_PRIOR = 0.01


class SubPixelHead(nn.Module):
    """3x3 convolution to num_classes * r * r maps, then pixel shuffle by r: logits at r times the
    decoder's resolution, learned rather than interpolated (r = 1: a plain 3x3 head).

    The weights start ICNR-style (every sub-pixel of a class shares one kernel), which makes the initial
    output a nearest-neighbour upsampling and avoids checkerboard artefacts.
    """

    def __init__(self, in_channels: int, num_classes: int, upscale: int) -> None:
        super().__init__()
        self.upscale = int(upscale)
        self.conv = nn.Conv2d(in_channels, num_classes * self.upscale**2, 3, padding=1)
        with torch.no_grad():
            base = nn.Conv2d(in_channels, num_classes, 3, padding=1)
            self.conv.weight.copy_(base.weight.repeat_interleave(self.upscale**2, dim=0))
            self.conv.bias.fill_(-math.log((1.0 - HEAD_PRIOR) / HEAD_PRIOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.upscale > 1:
            x = F.pixel_shuffle(x, self.upscale)
        return x


class ResUNet(nn.Module):
    """Segmenter returning logits [B, num_classes, H, W] for any input [B, in_channels, H, W].

    The input is resized by ``input_scale``, padded so that the encoder sees a multiple of 32 and folded
    by ``space_to_depth``; the head unfolds the decoder's output back to the resized resolution, and the
    logits are cropped to the unpadded region and (when input_scale < 1) resized to exactly H x W.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: list[int],
        blocks: list[int],
        decoder_widths: list[int],
        input_scale: float,
        mean: float,
        std: float,
        separable: bool = False,
        stem_convs: int = 1,
        space_to_depth: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}"
            )
        self.num_classes = num_classes
        self.adapter = InputAdapter(in_channels, mean, std, input_scale, space_to_depth)
        folded = self.adapter.out_channels
        self.encoder = ResNetEncoder(folded, widths, blocks, separable, stem_convs)
        self.decoder = UNetDecoder(widths, folded, decoder_widths, separable)
        self.head = SubPixelHead(
            self.decoder.out_channels, num_classes, space_to_depth * self.decoder.output_stride
        )
        self.resize_output = input_scale != 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        image, work_h, work_w = self.adapter(x)
        logits = self.head(self.decoder(self.encoder(image), image))[:, :, :work_h, :work_w]
        # Decided by the config, not by sizes, so that an export does not freeze the branch of one example.
        if self.resize_output:
            logits = F.interpolate(logits, size=[height, width], mode="bilinear", align_corners=False)
        # Channels-last weights (see model_bundle) would otherwise hand callers a strided layout that
        # numpy / OpenCV code does not expect.
        return logits.contiguous()

    def probabilities(self, x: torch.Tensor, codes: int = 0) -> torch.Tensor:
        """``sigmoid(self(x))``, with the sigmoid applied before the head's pixel shuffle and crop;
        with ``codes`` > 0, as uint8 round(codes * p), quantised before the shuffle too.

        The shuffle and the crop only move values, so they commute with elementwise functions;
        applied first, the sigmoid runs on the head convolution's output, which a runtime fuses into
        the convolution, instead of as a pass of its own over the 4 x 256 x 1600 map (a third of the
        segmenter's time in OpenVINO), and the shuffle moves a quarter of the bytes. With
        ``input_scale`` < 1 the bilinear resize does not commute: sigmoid and rounding come last.
        """
        if self.resize_output:
            probs = torch.sigmoid(self(x))
            return torch.round(probs * codes).to(torch.uint8) if codes > 0 else probs
        image, work_h, work_w = self.adapter(x)
        probs = torch.sigmoid(self.head.conv(self.decoder(self.encoder(image), image)))
        if codes > 0:
            probs = torch.round(probs * codes).to(torch.uint8)
        if self.head.upscale > 1:
            probs = F.pixel_shuffle(probs, self.head.upscale)
        # An export has fixed frame sizes: a crop that keeps everything is left out of the graph
        # (OpenVINO runs it as a copy).
        if probs.shape[-2] != work_h or probs.shape[-1] != work_w:
            probs = probs[:, :, :work_h, :work_w]
        return probs.contiguous()
