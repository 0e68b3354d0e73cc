# SPDX-License-Identifier: Apache-2.0
"""Bottleneck between the frozen encoder and the decoder, and the decoder's patch-expanding upsampler.

The bottleneck follows MambaAD v1 (after RD4AD): multi-scale feature fusion (MFF) brings every encoder level down
to the grid of the deepest one with strided 3×3 convolutions, aligns channels with 1×1 convolutions and sums;
one-class embedding (OCE) compresses the sum with a strided residual bottleneck block to ``2 × width(deepest)``
channels at half its resolution — a bottleneck narrow enough that anomalies are not reconstructed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .conv_norm_act import conv_norm_act


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*conv_norm_act(cin, cout, kernel, stride, act=functools.partial(nn.ReLU, inplace=True)))


class ResidualDown(nn.Module):
    """Residual bottleneck block with stride 2 (ResNet's ``1×1 → 3×3/2 → 1×1`` with a projection shortcut).

    The 3×3 runs at a quarter of the output width, which keeps the one-class embedding small.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 4, 1)
        self.body = nn.Sequential(
            _conv_bn_relu(cin, mid, 1, 1),
            _conv_bn_relu(mid, mid, 3, 2),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        """(B, cin, H, W) → (B, cout, H/2, W/2)."""
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class Bottleneck(nn.Module):
    """MFF + OCE.

    Args:
        channels: Encoder channels per level, shallow to deep.
        reductions: Encoder strides per level (each a power-of-two multiple of the previous one).
        out_channels: Output channels (default ``2 × channels[-1]``).
        feature_dropout: Dropout rate on the encoder features entering the bottleneck, in training only (Dinomaly's
            noisy bottleneck: the decoder must restore normal features from a corrupted code, so it generalises less
            to anomalous ones). 0 disables it (MambaAD).
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int | None = None,
        feature_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= feature_dropout < 1.0:
            msg = f"feature_dropout must be in [0, 1), got {feature_dropout}."
            raise ValueError(msg)
        self.dropout = nn.Dropout(feature_dropout) if feature_dropout > 0 else nn.Identity()
        deep = channels[-1]
        self.out_channels = out_channels or 2 * deep
        self.fuse = nn.ModuleList()
        for c, r in zip(channels, reductions, strict=True):
            steps = (reductions[-1] // r).bit_length() - 1  # stride-2 convs to reach the deepest grid
            layers: list[nn.Module] = [_conv_bn_relu(c, c, 3, 2) for _ in range(steps)]
            layers.append(_conv_bn_relu(c, deep, 1, 1))
            self.fuse.append(nn.Sequential(*layers))
        self.embed = ResidualDown(deep, self.out_channels)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Encoder features (shallow to deep) → (B, out_channels, H_deep/2, W_deep/2)."""
        fused = sum(f(self.dropout(x)) for f, x in zip(self.fuse, feats, strict=True))
        return self.embed(fused)


class PatchExpand(nn.Module):
    """Upsample a channels-last grid ×2: ``Linear(cin → 4·cout)``, 2×2 pixel shuffle, LayerNorm(cout)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cin, 4 * cout, bias=False)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, cin) → (B, 2H, 2W, cout)."""
        b, h, w, _ = x.shape
        x = self.proj(x).reshape(b, h, w, 2, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)
        return self.norm(x)
