# SPDX-License-Identifier: Apache-2.0
"""Hybrid State Space (HSS) block: a recurrence path along scan directions and a global matrix path.

``u ← u + DropPath(HSSCore(LayerNorm(u)))`` on a channels-last grid (B, H, W, C). Inside the core
(see ``docs/design.md`` §1.5 and §2.7–2.8):

1. one Linear projects u to ``[z, x, B, C, dt, a, trap, angles]``; x passes a 3×3 depthwise conv + SiLU on the grid;
2. recurrence path (local continuity): for each scan direction, tokens are permuted into scan order and the
   position-aware trapezoidal SSD runs (:func:`~anomalib_mambaadv2.components.ssd.ssd_sequences`); every
   (image, head, direction) is one sequence, so all directions run as one batched call;
3. matrix path (global contextual comparison): the dual form of the same discretised SSM with an all-ones mask,
   ``(1/L) C̃ (B̃ᵀ x̄)`` with each direction's position encoding — every token compared with every other, in
   O(L·N·P);
4. results back in raster order, averaged over directions: ``y = mean_k(y_R + g ⊙ y_M) + D ⊙ x``, then
   ``out_proj(LayerNorm(y) ⊙ SiLU(z))``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .hss_config import HSSConfig
from .scanning import scan_permutations_numpy
from .ssd import is_tracing, ssd_sequences


def _headdim(d_inner: int, preferred: int) -> int:
    """Largest head dim <= ``preferred`` that divides ``d_inner`` (so any encoder width works)."""
    return max(p for p in range(1, min(preferred, d_inner) + 1) if d_inner % p == 0)


# Per-token log-decay bound: −Δ_t A_t <= 3.5 (a token keeps at least e^-3.5 ≈ 3 % of the state; at initialisation
# −Δ A <= 1.6). It keeps 32-token chunks inside the factorised decay's exact range, so eager and exported graphs
# both take that form (components/ssd.py, _chunked_scan).
MAX_LOG_DECAY = 3.5

# Elements of one scan tensor (K directions × tokens × inner width) per call in eager mode; see HSSCore.forward.
_WORKING_SET = 1 << 20


@functools.lru_cache(maxsize=64)
def _scan_indices(hh: int, ww: int, curve: str, directions: tuple[int, ...], nh: int) -> tuple[np.ndarray, ...]:
    """Gather indices of one HSS block's scan (pure function of its arguments, so caching it is safe).

    Returns:
        ``tokens`` (K·L,): raster token of each scan step, direction-major; ``into`` (heads·K·L,): row of a
        (L·heads, ·) raster tensor for each (head, direction, step), so one gather yields the per-sequence layout;
        ``back`` (K·L·heads,): row of the (heads·K·L, ·) sequence output for each (direction, raster token, head).
    """
    perm, inv = scan_permutations_numpy(hh, ww, curve)  # NumPy: no FakeTensor can enter the cache while tracing
    perm, inv = perm[list(directions)], inv[list(directions)]  # (K, L)
    k, length = perm.shape
    heads = np.arange(nh)
    into = perm[None] * nh + heads[:, None, None]  # (heads, K, L)
    back = heads[None, None] * (k * length) + (inv + np.arange(k)[:, None] * length)[..., None]  # (K, L, heads)
    return perm.reshape(-1), into.reshape(-1), back.reshape(-1)


def _rms_norm(v: Tensor, eps: float = 1e-6) -> Tensor:
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)


class HSSCore(nn.Module):
    """The state-space mixer of an HSS block (no norm, no residual).

    Args:
        dim: Channels of the token grid.
        directions: Scan direction indices (0–7, see :mod:`~anomalib_mambaadv2.components.scanning`) of this block.
        config: SSM options (:class:`~anomalib_mambaadv2.components.hss_config.HSSConfig`; default: its defaults).
        grid_size: ``(H, W)`` of the grid this block will see, if known: its scan indices are then made once, as
            non-persistent buffers, so ``torch.compile`` traces the block without a graph break. Other grids still
            work (their indices are made on first use).
        **options: :class:`HSSConfig` fields to replace in ``config`` (e.g. ``d_state=8``).
    """

    def __init__(
        self,
        dim: int,
        directions: Sequence[int] = (0, 1),
        config: HSSConfig | None = None,
        grid_size: tuple[int, int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if not directions or any(not 0 <= k < 8 for k in directions):
            msg = f"`directions` must be a non-empty list of indices in 0..7, got {list(directions)}."
            raise ValueError(msg)
        self.config = c = HSSConfig.build(config, **options)
        self.d_inner = c.expand * dim
        self.headdim = _headdim(self.d_inner, c.headdim)
        self.nheads = self.d_inner // self.headdim
        self.d_state = n = c.d_state
        # rotate half of the state dims, in pairs; the pairs are dims (i, npairs + i) of the projected B and C
        # (ssd_sequences' layout, a relabelling of the projection's rows, equivalent to adjacent pairs)
        self.npairs = n // 4 if c.rotation else 0
        self.directions = list(directions)
        self.use_matrix, self.use_trapezoid = c.matrix_path, c.trapezoid
        self.scan_curve, self.chunk_size, self.ssd_backend = c.scan_curve, c.chunk_size, c.ssd_backend

        h = self.nheads
        self.splits = [self.d_inner, self.d_inner, n, n, h, h, h if c.trapezoid else 0, self.npairs]
        self.in_proj = nn.Linear(dim, sum(self.splits), bias=False)
        self.conv = nn.Conv2d(self.d_inner, self.d_inner, 3, padding=1, groups=self.d_inner)
        # Mamba-2 initialisation: Δ = softplus(dt_bias) log-uniform in [1e-3, 1e-1]; decay rate A in [1, 16].
        dt0 = torch.exp(torch.rand(h) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt0 + torch.log(-torch.expm1(-dt0)))
        a0 = torch.empty(h).uniform_(1.0, 16.0)
        self.a_bias = nn.Parameter(torch.log(torch.expm1(a0)))
        self.B_bias = nn.Parameter(torch.ones(h, n))
        self.C_bias = nn.Parameter(torch.ones(h, n))
        self.D = nn.Parameter(torch.ones(h))
        self.gain = nn.Parameter(torch.full((h,), 0.5)) if c.matrix_path else None
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        if self.npairs:  # ω ≈ 0 at initialisation: the layer starts as a trapezoidal Mamba-2
            with torch.no_grad():
                self.in_proj.weight[-self.npairs :].mul_(1e-2)
        self.grid_size = None if grid_size is None else (int(grid_size[0]), int(grid_size[1]))
        if self.grid_size is not None:  # not in the state dict: a pure function of the constructor's arguments
            names = ("scan_tokens", "scan_into", "scan_back")
            for name, idx in zip(names, self._make_index(*self.grid_size), strict=True):
                self.register_buffer(name, idx, persistent=False)

    def _make_index(self, hh: int, ww: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(tokens, into, back)`` of :func:`_scan_indices` for an ``hh × ww`` grid, as int64 tensors."""
        idx = _scan_indices(hh, ww, self.scan_curve, tuple(self.directions), self.nheads)
        return tuple(torch.from_numpy(i).to(device) for i in idx)

    def _scan_index(self, hh: int, ww: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Gather indices for all directions at once (see :func:`_scan_indices`).

        On the block's own grid these are its buffers; on another grid they are made now from NumPy (constants to the
        export tracer; ``torch.compile`` breaks its graph here).
        """
        if (hh, ww) == self.grid_size:
            return self.scan_tokens, self.scan_into, self.scan_back
        return self._make_index(hh, ww, device)

    def forward(self, u: Tensor) -> Tensor:
        """Mix a channels-last grid (B, H, W, dim) → (B, H, W, dim).

        In eager mode a large batch is mixed a few images at a time (images are independent): the scan's temporaries
        then stay in the CPU caches, which made batch 8 at 256 px about 1.5× faster per image here. Traced graphs
        (export) take the whole batch at once, so the batch size stays dynamic.
        """
        if is_tracing():  # first: a test on a symbolic batch size would fix the exported batch
            return self._mix(u)
        group = max(1, _WORKING_SET // (len(self.directions) * u.shape[1] * u.shape[2] * self.d_inner))
        if u.shape[0] > group:
            return torch.cat([self._mix(part) for part in u.split(group)])
        return self._mix(u)

    def _mix(self, u: Tensor) -> Tensor:
        batch, height, width, _ = u.shape
        indices = self._scan_index(height, width, u.device)
        layout = ScanLayout(batch, height, width, self.nheads, len(self.directions), *indices)
        z, x, B_proj, C_proj, dt, a, lam_logit, angle = torch.split(self.in_proj(u), self.splits, dim=-1)
        # image locality (MambaAD's 3×3 depthwise conv), kept channels-last so rows of P channels stay contiguous
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        x = F.silu(self.conv(x)).permute(0, 2, 3, 1)

        # Per-token quantities on the L grid tokens, before the K directions multiply them.
        dt = F.softplus(dt + self.dt_bias)  # Δ = softplus(dt + dt_bias)
        A = -F.softplus(a + self.a_bias).clamp_min(1e-4)  # A = −max(f(a), 1e-4)
        A = torch.maximum(A, -MAX_LOG_DECAY / dt)  # −Δ A <= MAX_LOG_DECAY
        per_head = [dt, A, torch.sigmoid(lam_logit)] if self.use_trapezoid else [dt, A]  # λ = sigmoid(lam_logit)
        shared = [_rms_norm(B_proj), _rms_norm(C_proj)]  # one B, C (and ω) for all heads of the block
        if self.npairs:
            shared.append(math.pi * torch.tanh(angle))  # ω = π tanh(angle)

        head_seq = layout.head_to_sequences(torch.stack(per_head, -1))  # (S, L, 2 or 3): Δ, A (, λ)
        shared_scan = layout.shared_to_scan_order(torch.cat(shared, -1))  # (B, K·L, 2N (+ pairs))
        n = self.d_state
        omega = None
        if self.npairs:
            omega = layout.shared_to_sequences(shared_scan[..., 2 * n :])
        y = ssd_sequences(
            layout.head_to_sequences(x),
            dt=head_seq[..., 0],
            A=head_seq[..., 1],
            B=layout.shared_to_sequences(shared_scan[..., :n], head_bias=self.B_bias),
            C=layout.shared_to_sequences(shared_scan[..., n : 2 * n], head_bias=self.C_bias),
            D=layout.per_sequence(self.D),
            lam=head_seq[..., 2] if self.use_trapezoid else None,
            omega=omega,
            matrix_gain=None if self.gain is None else layout.per_sequence(self.gain),
            chunk_size=self.chunk_size,
            backend=self.ssd_backend,
            max_log_decay=MAX_LOG_DECAY,
        )
        y = self.out_norm(layout.from_sequences(y)) * F.silu(z)
        return self.out_proj(y)


class ScanLayout:
    """How a block's raster tokens become its scan sequences and back: gathers and reshapes only.

    Every (image, head, direction) is one sequence of the L grid tokens in that direction's scan order; sequences are
    ordered image-major, then head, then direction (S = batch · heads · K). ``tokens``, ``into`` and ``back`` are the
    gather indices of :func:`_scan_indices`.
    """

    def __init__(
        self,
        batch: int,
        height: int,
        width: int,
        heads: int,
        directions: int,
        tokens: Tensor,
        into: Tensor,
        back: Tensor,
    ) -> None:
        self.batch, self.height, self.width, self.heads, self.directions = batch, height, width, heads, directions
        self.length = height * width
        self.sequences = batch * heads * directions
        self.tokens, self.into, self.back = tokens, into, back

    def head_to_sequences(self, v: Tensor) -> Tensor:
        """Per-head raster values (B, H, W, heads · F) → (S, L, F)."""
        rows = v.reshape(self.batch, self.length * self.heads, -1).index_select(1, self.into)
        return rows.reshape(self.sequences, self.length, -1)

    def shared_to_scan_order(self, v: Tensor) -> Tensor:
        """Values shared by all heads (B, H, W, F) → every direction's scan order, (B, K · L, F)."""
        return v.reshape(self.batch, self.length, -1).index_select(1, self.tokens)

    def shared_to_sequences(self, v: Tensor, head_bias: Tensor | None = None) -> Tensor:
        """Scan-ordered shared values (B, K · L, F), plus an optional per-head bias (heads, F) → (S, L, F)."""
        v = v[:, None] if head_bias is None else v[:, None] + head_bias[None, :, None]
        return v.expand(self.batch, self.heads, -1, -1).reshape(self.sequences, self.length, -1)

    def per_sequence(self, v: Tensor) -> Tensor:
        """A per-head parameter (heads,) → one value per sequence, (S,)."""
        return v[None, :, None].expand(self.batch, self.heads, self.directions).reshape(self.sequences)

    def from_sequences(self, y: Tensor) -> Tensor:
        """Sequence outputs (S, L, P) → raster order, channels-last (B, H, W, heads · P), averaged over directions."""
        rows = y.reshape(self.batch, -1, y.shape[-1]).index_select(1, self.back)
        return rows.reshape(self.batch, self.directions, self.height, self.width, -1).mean(1)


class HSSBlock(nn.Module):
    """Pre-norm residual HSS block: ``u + DropPath(HSSCore(LayerNorm(u)))``.

    Args:
        dim: Channels.
        drop_path: Stochastic depth rate.
        directions: Scan directions of the core.
        config: HSS options; with ``checkpointing`` set, training keeps only the block's input for backward and
            recomputes the rest there (``torch.utils.checkpoint``): less memory, about one more forward pass.
        grid_size: The block's grid (H, W), if known (its scan indices are then buffers).
        **options: :class:`HSSConfig` fields to replace in ``config``.
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        directions: Sequence[int] = (0, 1),
        config: HSSConfig | None = None,
        grid_size: tuple[int, int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        config = HSSConfig.build(config, **options)
        self.checkpointing = config.checkpointing
        self.norm = nn.LayerNorm(dim)
        self.core = HSSCore(dim, directions, config, grid_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _branch(self, u: Tensor) -> Tensor:
        return self.drop_path(self.core(self.norm(u)))

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # the RNG state is saved, so the recomputation draws the same stochastic-depth mask
            return u + checkpoint(self._branch, u, use_reentrant=False)
        return u + self._branch(u)
