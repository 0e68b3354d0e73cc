# SPDX-License-Identifier: Apache-2.0
"""Hybrid State Space (HSS) block: a recurrence path along scan directions and a global matrix path.

``u ← u + DropPath(HSSCore(LayerNorm(u)))`` on a channels-last grid (B, H, W, C). Inside the core
(see ``shared/DESIGN.md`` §4):

1. one Linear projects u to ``[z, x, B, C, dt, a, trap, angles]``; x passes a 3×3 depthwise conv + SiLU on the grid;
2. recurrence path (local continuity): for each scan direction, tokens are permuted into scan order, the
   position-aware trapezoidal SSD runs (:func:`~anomalib_mambaadv2.components.ssd.ssd`), and the result is put back
   in raster order; directions are averaged. All directions run as one batched call;
3. matrix path (global contextual comparison): ``(1/L) C̃ (B̃ᵀ Δx)`` — every token compared with every other, in
   O(L·N·P);
4. fusion ``y = y_R + g ⊙ y_M + D ⊙ x`` and ``out_proj(LayerNorm(y) ⊙ SiLU(z))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from .scanning import scan_permutations
from .ssd import Backend, global_matrix_mix, position_aware_bc, ssd


def _headdim(d_inner: int, preferred: int) -> int:
    """Largest head dim <= ``preferred`` that divides ``d_inner`` (so any encoder width works)."""
    return max(p for p in range(1, min(preferred, d_inner) + 1) if d_inner % p == 0)


def _rms_norm(v: Tensor, eps: float = 1e-6) -> Tensor:
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)


class HSSCore(nn.Module):
    """The state-space mixer of an HSS block (no norm, no residual).

    Args:
        dim: Channels of the token grid.
        directions: Scan direction indices (0–7, see :mod:`~anomalib_mambaadv2.components.scanning`) of this block.
        d_state: State size N per head.
        headdim: Preferred head dim P (reduced to a divisor of the inner width when needed).
        expand: Inner width D = expand · dim.
        matrix_path: Add the global matrix path.
        trapezoid: Exponential-trapezoidal discretisation (else Euler, as Mamba-2).
        rotation: Data-dependent rotary position of B and C (else none, as Mamba-2).
        scan_curve: ``"auto"``, ``"hilbert"``, ``"snake"`` or ``"raster"``.
        chunk_size: SSD chunk size.
        ssd_backend: ``"torch"``, ``"fused"`` or ``"auto"`` (see :func:`~anomalib_mambaadv2.components.ssd.ssd`).
    """

    def __init__(
        self,
        dim: int,
        directions: Sequence[int] = (0, 1),
        d_state: int = 32,
        headdim: int = 32,
        expand: int = 2,
        matrix_path: bool = True,
        trapezoid: bool = True,
        rotation: bool = True,
        scan_curve: str = "auto",
        chunk_size: int = 64,
        ssd_backend: Backend = "torch",
    ) -> None:
        super().__init__()
        if not directions or any(not 0 <= k < 8 for k in directions):
            msg = f"`directions` must be a non-empty list of indices in 0..7, got {list(directions)}."
            raise ValueError(msg)
        self.d_inner = expand * dim
        self.headdim = _headdim(self.d_inner, headdim)
        self.nheads = self.d_inner // self.headdim
        self.d_state = d_state
        self.npairs = d_state // 4 if rotation else 0  # rotate half of the state dims, in pairs
        self.directions = list(directions)
        self.use_matrix, self.use_trapezoid = matrix_path, trapezoid
        self.scan_curve, self.chunk_size, self.ssd_backend = scan_curve, chunk_size, ssd_backend

        h, n = self.nheads, d_state
        self.splits = [self.d_inner, self.d_inner, n, n, h, h, h if trapezoid else 0, self.npairs]
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
        self.gain = nn.Parameter(torch.full((h,), 0.5)) if matrix_path else None
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        if self.npairs:  # ω ≈ 0 at initialisation: the layer starts as a trapezoidal Mamba-2
            with torch.no_grad():
                self.in_proj.weight[-self.npairs :].mul_(1e-2)

    def _scan_index(self, hh: int, ww: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Flattened gather indices for all directions at once: (K·L,) into (L,) and back from (K·L,)."""
        perm, inv = scan_permutations(hh, ww, self.scan_curve)
        k, length = len(self.directions), hh * ww
        perm, inv = perm[self.directions], inv[self.directions]  # (K, L)
        inv = inv + torch.arange(k).unsqueeze(1) * length  # index into the K·L stacked sequences
        return perm.flatten().to(device), inv.flatten().to(device)

    def forward(self, u: Tensor) -> Tensor:
        """Mix a channels-last grid (B, H, W, dim) → (B, H, W, dim)."""
        b, hh, ww, _ = u.shape
        length, k, nh, p = hh * ww, len(self.directions), self.nheads, self.headdim
        z, x, Bp, Cp, dt, a, trap, ang = torch.split(self.in_proj(u), self.splits, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)  # image locality (MambaAD's conv)

        x = x.reshape(b, length, nh, p)
        dt = F.softplus(dt.reshape(b, length, nh) + self.dt_bias)  # Δ = softplus(dt + dt_bias)
        A = -F.softplus(a.reshape(b, length, nh) + self.a_bias).clamp_min(1e-4)  # A = −max(f(a), 1e-4)
        Bp = _rms_norm(Bp.reshape(b, length, 1, -1)) + self.B_bias  # (b, l, heads, n)
        Cp = _rms_norm(Cp.reshape(b, length, 1, -1)) + self.C_bias
        lam = torch.sigmoid(trap.reshape(b, length, nh)) if self.use_trapezoid else None  # λ
        omega = math.pi * torch.tanh(ang.reshape(b, length, -1)) if self.npairs else None  # ω = π tanh(angles)

        # Recurrence path: the K directions stacked into the batch, one SSD call.
        perm, inv = self._scan_index(hh, ww, u.device)

        def scan(t: Tensor | None) -> Tensor | None:  # (b, l, ...) → (b·K, l, ...) in scan order
            return None if t is None else t[:, perm].reshape(b * k, length, *t.shape[2:])

        y = ssd(
            scan(x), scan(dt), scan(A), scan(Bp), scan(Cp), None, scan(lam), scan(omega),
            chunk_size=self.chunk_size, backend=self.ssd_backend,
        )  # fmt: skip
        y = y.reshape(b, k * length, nh, p)[:, inv].reshape(b, k, length, nh, p).mean(1)

        if self.gain is not None:  # matrix path, with θ along raster order
            Bm, Cm = position_aware_bc(Bp, Cp, dt, omega)
            y = y + self.gain[:, None] * global_matrix_mix(x * dt.unsqueeze(-1), Bm, Cm)
        y = y + self.D[:, None] * x
        y = self.out_norm(y.reshape(b, hh, ww, self.d_inner)) * F.silu(z)
        return self.out_proj(y)


class HSSBlock(nn.Module):
    """Pre-norm residual HSS block: ``u + DropPath(HSSCore(LayerNorm(u)))``.

    Args:
        dim: Channels.
        drop_path: Stochastic depth rate.
        **core_kwargs: Arguments of :class:`HSSCore`.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, **core_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.core = HSSCore(dim, **core_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        return u + self.drop_path(self.core(self.norm(u)))
