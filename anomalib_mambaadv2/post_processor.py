# SPDX-License-Identifier: Apache-2.0
"""MambaADv2's default post-processor: Anomalib's, with a strictly monotonic score normalisation (no clipping ties)."""

from __future__ import annotations

import torch
from anomalib.post_processing import PostProcessor

__all__ = ["SoftPostProcessor"]


class SoftPostProcessor(PostProcessor):
    """Anomalib's post-processor with a strictly monotonic normalisation into (0, 1) instead of a clipped one.

    Anomalib maps a score ``s`` to ``(s - threshold) / (max - min) + 0.5`` with ``min``/``max`` taken on the small
    validation split and clips the result to [0, 1]: every test image scoring above the validation maximum becomes
    1.0, normal or not, and those ties lower the ranking metrics (AUROC, AUPR) below what the model's scores give.
    Leaving the values unclipped is no cure either: torchmetrics then applies a sigmoid to each *batch* that holds a
    value outside [0, 1] and not to the others, which scrambles the ranking across batches.

    Here ``z = 2 (s - threshold) / (max - min)`` is mapped to ``0.5 + 0.5 z / (1 + |z|)``: 0.5 is still the
    threshold, the slope at the threshold is anomalib's, values stay inside (0, 1), and the map is strictly
    increasing, so the test metrics equal those of the raw scores. Labels and masks are thresholded at 0.5 as usual.
    """

    @staticmethod
    def _normalize(
        preds: torch.Tensor | None, norm_min: torch.Tensor, norm_max: torch.Tensor, threshold: torch.Tensor
    ) -> torch.Tensor | None:
        if preds is None:
            return preds
        threshold = torch.where(torch.isnan(threshold), (norm_max + norm_min) / 2, threshold)
        value_range = norm_max - norm_min
        safe_range = torch.where(value_range == 0, torch.ones_like(value_range), value_range)
        z = 2 * (preds - threshold) / safe_range
        normalized = 0.5 + 0.5 * z / (1 + z.abs())
        has_range = ~torch.isnan(norm_min) & ~torch.isnan(norm_max)
        return torch.where(has_range, normalized, preds)
