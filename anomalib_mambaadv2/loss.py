# SPDX-License-Identifier: Apache-2.0
"""Reconstruction loss between frozen encoder features and decoder features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReconstructionLoss(nn.Module):
    """``Σ_scales weight · MSE(f_i, ŝ_i)`` (MambaAD; weight 5) or ``Σ_scales mean(1 − cos(f_i, ŝ_i))``.

    The encoder features come detached from ``FrozenEncoder`` (only the decoder learns), so they are the targets.

    Args:
        kind: ``"mse"`` or ``"cosine"``.
        weight: Per-scale weight of the MSE term.
    """

    def __init__(self, kind: str = "mse", weight: float = 5.0) -> None:
        super().__init__()
        if kind not in {"mse", "cosine"}:
            msg = f"loss `kind` must be 'mse' or 'cosine', got {kind!r}."
            raise ValueError(msg)
        self.kind, self.weight = kind, weight

    def forward(self, enc: Sequence[Tensor], dec: Sequence[Tensor]) -> Tensor:
        """Scalar loss over all scales."""
        terms = []
        for e, d in zip(enc, dec, strict=True):
            if self.kind == "mse":
                terms.append(self.weight * F.mse_loss(d, e))
            else:
                terms.append((1 - F.cosine_similarity(e, d, dim=1)).mean())
        return torch.stack(terms).sum()
