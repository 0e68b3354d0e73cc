# SPDX-License-Identifier: Apache-2.0
"""Anomaly map: per-scale cosine distance between encoder and decoder features, upsampled, averaged and smoothed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gaussian_kernel1d(sigma: float) -> Tensor:
    """Normalised 1D Gaussian with radius ``int(4σ + 0.5)`` (scipy's default truncation)."""
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


class AnomalyMapGenerator(nn.Module):
    """``mean_i upsample(1 − cos(f_i, ŝ_i))`` → separable Gaussian blur. Shapes are static (export-friendly).

    Args:
        sigma: Standard deviation of the Gaussian blur in pixels (0 disables it).
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = sigma
        self.register_buffer("kernel", gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1), persistent=False)

    def blur(self, amap: Tensor) -> Tensor:
        """Separable Gaussian with reflect padding: (B, 1, H, W) → (B, 1, H, W)."""
        k = self.kernel.to(amap.dtype)
        r = k.numel() // 2
        if r == 0:
            return amap
        amap = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(amap, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    def forward(self, enc: Sequence[Tensor], dec: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Encoder and decoder features (B, C_i, H_i, W_i) per scale → anomaly map (B, 1, H, W)."""
        maps = [
            F.interpolate(
                (1 - F.cosine_similarity(e, d, dim=1)).unsqueeze(1),
                size=image_size,
                mode="bilinear",
                align_corners=False,
            )
            for e, d in zip(enc, dec, strict=True)
        ]
        return self.blur(torch.stack(maps, dim=0).mean(0))
