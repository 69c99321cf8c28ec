"""ResNet defect-presence classifier: one logit per class (sigmoid, multi-label)."""

from __future__ import annotations

import torch
from torch import nn

from training.networks.blocks import InputAdapter, ResNetEncoder


class ResNetClassifier(nn.Module):
    """ResNet of basic blocks with global average + max pooling and a linear head.

    Max pooling sits beside average pooling because a defect may cover a few hundred pixels of a
    400,000-pixel frame: the average alone would dilute it away.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: list[int],
        blocks: list[int],
        input_scale: float,
        mean: float,
        std: float,
        separable: bool = False,
        stem_convs: int = 1,
        dropout: float = 0.0,
        space_to_depth: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}"
            )
        self.num_classes = num_classes
        # Global pooling needs no alignment of feature maps, so no padding beyond what folding needs.
        self.adapter = InputAdapter(in_channels, mean, std, input_scale, space_to_depth, multiple=1)
        self.encoder = ResNetEncoder(self.adapter.out_channels, widths, blocks, separable, stem_convs)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, _, _ = self.adapter(x)
        features = self.encoder(image)[-1]
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))
