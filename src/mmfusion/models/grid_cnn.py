"""A small CNN that turns raw images into a grid of features, trained end to end with MCAN (easy-VQA).

Stands in for the frozen ResNet-152 grid extractor of Farinhas (2021), Sect. 6.2.1 (448x448 -> 14x14x2048), on
small synthetic images: each stage is ``Conv3x3(stride 2) -> BatchNorm -> ReLU`` (halving the resolution), then
one ``Conv3x3(stride 1) -> ReLU``. A 64x64 image with 3 stages gives an 8x8 grid.
"""

from __future__ import annotations

from torch import Tensor, nn


class GridCNN(nn.Module):
    """``(B, C, H, W) -> (B, channels[-1], H / 2^S, W / 2^S)`` for S = len(channels) stride-2 stages.

    Args:
        in_channels: image channels (3 for RGB).
        channels: output channels of each stride-2 stage (Conv 3x3 -> BatchNorm -> ReLU); a final 3x3 conv + ReLU
            keeps the last width.
    """

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.n_stages = len(channels)
        self.out_channels = c_in

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        h, w = image_size
        for _ in range(self.n_stages):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
