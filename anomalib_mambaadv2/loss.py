# SPDX-License-Identifier: Apache-2.0
"""Reconstruction loss between frozen encoder features and decoder features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("mse", "cosine", "cosine_hm")


def shrink_easy_gradients(dec: Tensor, easy: Tensor, factor: float) -> Tensor:
    """``dec`` unchanged in value; its gradient multiplied by ``factor`` where ``easy`` (broadcast over channels).

    ``factor · d + (1 − factor) · stopgrad(d)`` equals ``d`` and has derivative ``factor``: the same as a backward hook
    that scales those gradients, without a hook (nothing to register per step, checkpoint- and DDP-neutral).
    """
    shrunk = factor * dec + (1 - factor) * dec.detach()
    return torch.where(easy, shrunk, dec)


class ReconstructionLoss(nn.Module):
    """The decoder's training objective, one of three ``kind``s over the encoder scales ``i``.

    * ``"mse"`` (MambaAD's): ``Σ_i weight · MSE(f_i, ŝ_i)``.
    * ``"cosine"`` (RD's): ``Σ_i mean_hw(1 − cos_c(f_i, ŝ_i))``.
    * ``"cosine_hm"`` (Dinomaly's loose loss): ``mean_i mean_b(1 − cos(vec f_i, vec ŝ_i))``, one cosine over each
      image's whole feature map (a loose constraint: no single position has to match), and the gradient of every
      position whose point distance ``1 − cos_c`` is below the batch's ``p``-quantile is multiplied by ``factor``
      (hard mining: training follows the worst-reconstructed ``1 − p`` of positions). ``p`` rises linearly from 0
      to ``hm_p`` over the first ``hm_ramp`` of training (Dinomaly: 0.9 over 1 000 of 10 000 iterations).

    The encoder features come detached from ``FrozenEncoder`` (only the decoder learns), so they are the targets.

    Args:
        kind: ``"mse"``, ``"cosine"`` or ``"cosine_hm"``.
        weight: Per-scale weight of the MSE term.
        hm_p: Final fraction of positions whose gradients are shrunk (``cosine_hm``).
        hm_factor: Their gradient factor (``cosine_hm``).
        hm_ramp: Fraction of training over which ``p`` rises from 0 to ``hm_p`` (``cosine_hm``).
    """

    def __init__(
        self, kind: str = "mse", weight: float = 5.0, hm_p: float = 0.9, hm_factor: float = 0.1, hm_ramp: float = 0.1
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            msg = f"loss `kind` must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}."
            raise ValueError(msg)
        if not (0 <= hm_p < 1 and 0 <= hm_factor <= 1 and hm_ramp >= 0):
            msg = f"loss: hard mining needs 0 <= hm_p < 1, 0 <= hm_factor <= 1, hm_ramp >= 0 ({hm_p=}, {hm_factor=}, "
            msg += f"{hm_ramp=})."
            raise ValueError(msg)
        self.kind, self.weight = kind, weight
        self.hm_p, self.hm_factor, self.hm_ramp = hm_p, hm_factor, hm_ramp

    def hard_fraction(self, progress: float) -> float:
        """``p`` at ``progress`` (fraction of the training steps done, 0 … 1)."""
        if self.hm_ramp <= 0:
            return self.hm_p
        return self.hm_p * min(1.0, max(0.0, progress) / self.hm_ramp)

    def forward(self, enc: Sequence[Tensor], dec: Sequence[Tensor], progress: float = 1.0) -> Tensor:
        """Scalar loss over all scales; ``progress`` (fraction of training done) sets ``cosine_hm``'s ramp."""
        terms = []
        for e, d in zip(enc, dec, strict=True):
            if self.kind == "mse":
                terms.append(self.weight * F.mse_loss(d, e))
            elif self.kind == "cosine":
                terms.append((1 - F.cosine_similarity(e, d, dim=1)).mean())
            else:
                terms.append(self._hard_mined(e, d, self.hard_fraction(progress)))
        total = torch.stack(terms)
        return total.mean() if self.kind == "cosine_hm" else total.sum()

    def _hard_mined(self, e: Tensor, d: Tensor, p: float) -> Tensor:
        with torch.no_grad():
            point = 1 - F.cosine_similarity(e, d, dim=1).unsqueeze(1)  # (B, 1, H, W)
            k = max(1, int(point.numel() * (1 - p)))  # the k hardest positions keep their full gradient
            threshold = point.flatten().topk(k).values[-1]
        d = shrink_easy_gradients(d, point < threshold, self.hm_factor)
        return (1 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
