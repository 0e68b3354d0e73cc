# SPDX-License-Identifier: Apache-2.0
"""Chunked, position-aware state-space duality (SSD) in plain PyTorch.

Per head (head dim ``P``, state size ``N``) and token ``t`` the layer computes (see ``shared/DESIGN.md`` §3)::

    H_t = α_t H_{t-1} + β_t x_{t-1} B̃_{t-1}ᵀ + γ_t x_t B̃_tᵀ        y_t = H_t C̃_t + D x_t
    α_t = exp(Δ_t A_t)    β_t = (1 - λ_t) Δ_t α_t    γ_t = λ_t Δ_t     (exponential-trapezoidal, Mamba-3)
    B̃_t, C̃_t = B_t, C_t rotated pairwise by θ_t = Σ_{s<=t} ω_s Δ_s        (data-dependent rotary, Mamba-3)

``λ ≡ 1`` and ``ω ≡ 0`` give back Mamba-2. In matrix ("dual") form this is SSD with the input scaled per token by
``s_t = λ_t Δ_t + (1 - λ_{t+1}) Δ_{t+1}`` minus the diagonal term ``c_t (C̃_t·B̃_t) x_t``,
``c_t = (1 - λ_{t+1}) Δ_{t+1}``, so one chunked SSD routine serves every variant.

Public functions:
    * :func:`ssd` — the layer, chunked (linear in ``L``); dispatches to ``mamba_ssm`` kernels on request.
    * :func:`global_matrix_mix` — the HSS matrix path ``(1/L) C̃ (B̃ᵀ x)`` in O(L·N·P).
    * :func:`ssd_reference` — the step-by-step recurrence, for tests.
    * :func:`ssd_quadratic` — the naive L×L masked matrix form, for tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "torch", "fused"]

__all__ = [
    "fused_available",
    "global_matrix_mix",
    "position_aware_bc",
    "rotate_pairs",
    "segsum",
    "ssd",
    "ssd_quadratic",
    "ssd_reference",
]


# --------------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------------
def _is_tracing() -> bool:
    """True while torch.export / dynamo / TorchScript trace the graph (data-dependent checks must be skipped)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _check_inputs(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    lam: Tensor | None,
    omega: Tensor | None,
) -> None:
    """Raise a ValueError naming the offending argument and its shape."""
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "lam": lam, "omega": omega}
    for name, t in named.items():
        if t is not None and not t.is_floating_point():
            msg = f"`{name}` must be a floating-point tensor, got dtype {t.dtype} (shape {tuple(t.shape)})."
            raise ValueError(msg)
    if x.ndim != 4:
        msg = f"`x` must have shape (batch, length, heads, headdim), got {tuple(x.shape)}."
        raise ValueError(msg)
    b, l, h, _ = x.shape
    for name in ("dt", "A", "lam"):
        t = named[name]
        if t is not None and tuple(t.shape) != (b, l, h):
            msg = f"`{name}` must have shape (batch, length, heads) = {(b, l, h)}, got {tuple(t.shape)}."
            raise ValueError(msg)
    if B.ndim != 4 or B.shape[:2] != (b, l):
        msg = f"`B` must have shape (batch, length, groups, state) with batch, length = {(b, l)}, got {tuple(B.shape)}."
        raise ValueError(msg)
    if C.shape != B.shape:
        msg = f"`C` must have the shape of `B` {tuple(B.shape)}, got {tuple(C.shape)}."
        raise ValueError(msg)
    g, n = B.shape[2], B.shape[3]
    if h % g != 0:
        msg = f"the number of heads ({h}, from `x` {tuple(x.shape)}) must be a multiple of the groups of `B` ({g})."
        raise ValueError(msg)
    if D is not None and tuple(D.shape) != (h,):
        msg = f"`D` must have shape (heads,) = {(h,)}, got {tuple(D.shape)}."
        raise ValueError(msg)
    if omega is not None:
        if omega.ndim not in {3, 4} or omega.shape[:2] != (b, l) or (omega.ndim == 4 and omega.shape[2] != h):
            msg = (
                "`omega` must have shape (batch, length, pairs) or (batch, length, heads, pairs), "
                f"got {tuple(omega.shape)}."
            )
            raise ValueError(msg)
        if 2 * omega.shape[-1] > n:
            msg = f"`omega` rotates {omega.shape[-1]} pairs, more than the state size {n} of `B` allows ({n // 2})."
            raise ValueError(msg)
    if not _is_tracing() and bool(torch.isnan(dt).any()):
        msg = f"`dt` (shape {tuple(dt.shape)}) contains NaN; check the dt projection and its bias."
        raise ValueError(msg)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------
def segsum(a: Tensor) -> Tensor:
    """Stable segment sum: ``out[..., t, s] = Σ_{r=s+1..t} a[..., r]`` for ``s <= t``, ``-inf`` above the diagonal.

    Built as a cumulative sum over a masked, repeated matrix rather than ``cumsum[t] - cumsum[s]``, which loses
    precision when the cumulative log-decay grows large.
    """
    q = a.shape[-1]
    a = a.unsqueeze(-1).expand(*a.shape, q)  # [..., r, s] = a_r
    strict = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~strict, 0.0)  # keep a_r only for r > s
    out = torch.cumsum(a, dim=-2)  # Σ_{s<r<=t} a_r
    causal = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device), diagonal=0)
    return out.masked_fill(~causal, -torch.inf)


def rotate_pairs(v: Tensor, theta: Tensor) -> Tensor:
    """Rotate adjacent pairs ``(2i, 2i+1)`` of ``v`` (…, N) by ``theta`` (…, S) for ``i < S``; keep the rest."""
    s = theta.shape[-1]
    even, odd = v[..., 0 : 2 * s : 2], v[..., 1 : 2 * s : 2]
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat((rotated, v[..., 2 * s :]), dim=-1)


def _heads(v: Tensor, h: int) -> Tensor:
    """Broadcast B or C from G groups to H heads: (b, l, g, n) -> (b, l, h, n)."""
    g = v.shape[2]
    return v if g == h else v.repeat_interleave(h // g, dim=2)


def position_aware_bc(B: Tensor, C: Tensor, dt: Tensor, omega: Tensor | None) -> tuple[Tensor, Tensor]:
    """B̃, C̃ per head: B, C broadcast to heads and rotated by θ_t = (Σ_{s<=t} ω_s Δ_s) mod 2π along the sequence.

    Args:
        B: (batch, length, groups, state).
        C: same shape as ``B``.
        dt: Step sizes Δ, (batch, length, heads).
        omega: Angle rates, (batch, length, pairs) or (batch, length, heads, pairs); None for no rotation.
    """
    h = dt.shape[-1]
    B, C = _heads(B, h), _heads(C, h)
    if omega is None:
        return B, C
    if omega.ndim == 3:  # shared over heads
        omega = omega.unsqueeze(2)
    # θ grows like a random walk along the sequence; a float32 running sum would lose ~1e-5 rad over a few hundred
    # tokens, so accumulate in float64 and wrap before going back to the working precision.
    theta = torch.cumsum((omega * dt.unsqueeze(-1)).double(), dim=1)
    theta = torch.remainder(theta, 2 * math.pi).to(dt.dtype)  # (b, l, h, s)
    return rotate_pairs(B, theta), rotate_pairs(C, theta)


def _trapezoid_weights(dt: Tensor, lam: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Input scale s_t = λ_t Δ_t + (1-λ_{t+1}) Δ_{t+1} and diagonal correction c_t = (1-λ_{t+1}) Δ_{t+1}."""
    if lam is None:
        return dt, None
    nxt = F.pad(((1.0 - lam) * dt)[:, 1:], (0, 0, 0, 1))  # (1-λ_{t+1}) Δ_{t+1}, with Δ_{L+1} := 0
    return lam * dt + nxt, nxt


def _chunked_scan(x: Tensor, a: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> Tensor:
    """Causal SSD ``y_t = Σ_{s<=t} exp(Σ_{r=s+1..t} a_r) (C_t·B_s) x_s`` in chunks of ``chunk_size`` tokens.

    Args:
        x: Input already scaled by the discretisation weight, (b, l, h, p).
        a: Log-decay ``Δ_t A_t`` (<= 0), (b, l, h).
        B: Per-head input projection, (b, l, h, n).
        C: Per-head output projection, (b, l, h, n).
        chunk_size: Tokens per chunk Q; cost is O(L·Q·(N+P)).
    """
    b, l, h, p = x.shape
    q = chunk_size
    pad = (-l) % q
    if pad:  # zero input and zero decay in the padding: it changes nothing before the crop
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        a = F.pad(a, (0, 0, 0, pad))
    nc = (l + pad) // q
    x, B, C = (t.reshape(b, nc, q, h, -1) for t in (x, B, C))  # (b, c, q, h, ·)
    a = a.reshape(b, nc, q, h).permute(0, 3, 1, 2)  # (b, h, c, q)
    a_cum = torch.cumsum(a, dim=-1)

    # 1. within each chunk: the quadratic masked form (L ∘ C Bᵀ) x
    decay = torch.exp(segsum(a))  # (b, h, c, q, s)
    scores = torch.einsum("bcqhn,bcshn->bhcqs", C, B) * decay
    y = torch.einsum("bhcqs,bcshp->bcqhp", scores, x)

    # 2. each chunk's final state: Σ_s exp(Σ_{r>s} a_r) x_s B_sᵀ (the last row of the decay matrix)
    states = torch.einsum("bcshn,bhcs,bcshp->bchpn", B, decay[..., -1, :], x)

    # 3. recurrence over chunk states H_c = exp(A_{c-1}) H_{c-1} + S_{c-1}: its matrix form while the chunks fit in
    #    one chunk, else the same chunked routine on the state sequence (B = C = 1), which keeps the cost linear in L
    a_chunk = a_cum[..., -1]  # (b, h, c): total log-decay of each chunk
    if nc <= q or q < 2:
        chunk_decay = torch.exp(segsum(F.pad(a_chunk, (1, 0))))  # (b, h, c+1, c+1)
        states = torch.cat((torch.zeros_like(states[:, :1]), states), dim=1)
        states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]  # state entering each chunk
    else:
        n = states.shape[-1]
        ones = states.new_ones(b, nc, h, 1)
        summed = _chunked_scan(states.reshape(b, nc, h, p * n), a_chunk.transpose(1, 2), ones, ones, q)
        states = F.pad(summed, (0, 0, 0, 0, 1, 0))[:, :-1].reshape(b, nc, h, p, n)  # shift: state entering chunk c

    # 4. contribution of the incoming state: exp(Σ_{r<=t} a_r) C_t·H_in
    y = y + torch.einsum("bcqhn,bchpn,bhcq->bcqhp", C, states, torch.exp(a_cum))
    return y.reshape(b, nc * q, h, p)[:, :l]


# --------------------------------------------------------------------------------------------------------------------
# Optional fused path (mamba_ssm Triton kernels, NVIDIA GPU only)
# --------------------------------------------------------------------------------------------------------------------
def fused_available() -> bool:
    """Whether ``mamba_ssm``'s Triton SSD kernel can be imported and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except Exception:
        return False
    return True


def _fused_scan(x: Tensor, a: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> Tensor:
    """Same contract as :func:`_chunked_scan`, on ``mamba_chunk_scan_combined``.

    The kernel takes a per-head constant ``A`` and scales the input by its ``dt``. A per-token decay folds in
    exactly: ``dt' = -a`` with ``A' = -1`` gives the decay, and ``x / dt'`` undoes the kernel's input scaling.
    """
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    dt_k = (-a).clamp_min(1e-12)
    a_k = -torch.ones(x.shape[2], device=x.device, dtype=torch.float32)
    return mamba_chunk_scan_combined(x / dt_k.unsqueeze(-1), dt_k, a_k, B, C, chunk_size)


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------
def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    lam: Tensor | None = None,
    omega: Tensor | None = None,
    chunk_size: int = 64,
    backend: Backend = "torch",
) -> Tensor:
    """Position-aware, exponential-trapezoidal SSD (Mamba-2 when ``lam`` and ``omega`` are None).

    Δ, cumulative sums, exponentials and states are computed in float32 (float64 stays float64) whatever the
    autocast context; the result has the dtype of ``x``.

    Args:
        x: Input, (batch, length, heads, headdim).
        dt: Step sizes Δ > 0, (batch, length, heads).
        A: Data-dependent decay rates A < 0, (batch, length, heads).
        B: Input projections, (batch, length, groups, state); heads must be a multiple of groups.
        C: Output projections, same shape as ``B``.
        D: Optional skip weight per head, (heads,).
        lam: Optional trapezoid weights λ in (0, 1), (batch, length, heads). None means λ ≡ 1 (Euler, Mamba-2).
        omega: Optional angle rates ω, (batch, length, pairs) or (batch, length, heads, pairs) with
            ``2·pairs <= state``. None means no rotation.
        chunk_size: Tokens per chunk.
        backend: ``"torch"`` (pure PyTorch, exportable), ``"fused"`` (``mamba_ssm`` kernels; an error where they
            cannot run) or ``"auto"`` (fused on CUDA when available, except while exporting).

    Returns:
        Output y, shaped like ``x``.

    Raises:
        ValueError: On mismatched shapes, non-float tensors, NaN in ``dt`` or a bad ``chunk_size``/``backend``.
        RuntimeError: If ``backend="fused"`` is asked for where the kernels cannot run.
    """
    _check_inputs(x, dt, A, B, C, D, lam, omega)
    if chunk_size < 1:
        msg = f"`chunk_size` must be a positive integer, got {chunk_size}."
        raise ValueError(msg)
    if backend not in {"auto", "torch", "fused"}:
        msg = f"`backend` must be 'auto', 'torch' or 'fused', got {backend!r}."
        raise ValueError(msg)
    use_fused = backend == "fused" or (backend == "auto" and x.is_cuda and not _is_tracing() and fused_available())
    if backend == "fused" and not (x.is_cuda and fused_available()):
        msg = (
            "backend='fused' needs an NVIDIA GPU, CUDA tensors and `mamba_ssm` "
            f"(pip install 'anomalib-mambaadv2[fused]'); got tensors on {x.device}, "
            f"CUDA available: {torch.cuda.is_available()}. Use backend='torch' or 'auto'."
        )
        raise RuntimeError(msg)

    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        lam = None if lam is None else lam.to(dtype)
        omega = None if omega is None else omega.to(dtype)
        B, C = position_aware_bc(B, C, dt, omega)
        s, c = _trapezoid_weights(dt, lam)
        scan = _fused_scan if use_fused else _chunked_scan
        y = scan(x * s.unsqueeze(-1), dt * A, B, C, chunk_size)
        if c is not None:  # remove the (1-λ_{t+1})Δ_{t+1} x_t B_t term that s_t over-counts at s = t
            y = y - (c * (C * B).sum(-1)).unsqueeze(-1) * x
        if D is not None:
            y = y + D.to(dtype)[:, None] * x
    return y.to(out_dtype)


def global_matrix_mix(x: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """HSS matrix path: the dual form with an all-ones mask, ``y = (1/L) C (Bᵀ x)`` per head.

    Evaluated right to left (state N×P per head), never as an L×L matrix. Computed in float32 like :func:`ssd`.

    Args:
        x: (batch, length, heads, headdim).
        B: (batch, length, groups, state), heads a multiple of groups.
        C: same shape as ``B``.

    Returns:
        (batch, length, heads, headdim), dtype of ``x``.
    """
    if x.ndim != 4 or B.ndim != 4 or B.shape[:2] != x.shape[:2] or C.shape != B.shape or x.shape[2] % B.shape[2]:
        msg = (
            "global_matrix_mix expects x (b, l, h, p) and B, C (b, l, g, n) with h a multiple of g; got "
            f"x {tuple(x.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}."
        )
        raise ValueError(msg)
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        h = x.shape[2]
        x, B, C = x.to(dtype), _heads(B.to(dtype), h), _heads(C.to(dtype), h)
        state = torch.einsum("blhn,blhp->bhnp", B, x) / x.shape[1]  # (1/L) Bᵀ x
        y = torch.einsum("blhn,bhnp->blhp", C, state)
    return y.to(out_dtype)


# --------------------------------------------------------------------------------------------------------------------
# Slow references (tests and benchmarks only)
# --------------------------------------------------------------------------------------------------------------------
def ssd_reference(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    lam: Tensor | None = None,
    omega: Tensor | None = None,
) -> Tensor:
    """Step-by-step recurrence, one token at a time. Slow and obvious: the ground truth for :func:`ssd`."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    B, C = _heads(B, h), _heads(C, h)
    lam = torch.ones_like(dt) if lam is None else lam
    if omega is not None and omega.ndim == 3:
        omega = omega.unsqueeze(2).expand(b, l, h, omega.shape[-1])
    state = x.new_zeros(b, h, p, n)  # H_t
    prev = x.new_zeros(b, h, p, n)  # x_{t-1} B̃_{t-1}ᵀ
    theta = x.new_zeros(b, h, 0 if omega is None else omega.shape[-1])
    ys = []
    for t in range(l):
        b_t, c_t = B[:, t], C[:, t]
        if omega is not None:
            theta = theta + omega[:, t] * dt[:, t, :, None]  # θ_t = θ_{t-1} + ω_t Δ_t
            rot = torch.stack(  # 2×2 rotation per pair: [[cos, -sin], [sin, cos]]
                (torch.stack((theta.cos(), -theta.sin()), -1), torch.stack((theta.sin(), theta.cos()), -1)), -2
            )
            s = theta.shape[-1]
            b_t = torch.cat(((rot @ b_t[..., : 2 * s].unflatten(-1, (s, 2, 1))).flatten(-3), b_t[..., 2 * s :]), -1)
            c_t = torch.cat(((rot @ c_t[..., : 2 * s].unflatten(-1, (s, 2, 1))).flatten(-3), c_t[..., 2 * s :]), -1)
        alpha = torch.exp(dt[:, t] * A[:, t])  # α_t = exp(Δ_t A_t)
        beta = (1 - lam[:, t]) * dt[:, t] * alpha  # β_t = (1-λ_t) Δ_t α_t
        gamma = lam[:, t] * dt[:, t]  # γ_t = λ_t Δ_t
        cur = x[:, t, :, :, None] * b_t[:, :, None, :]  # x_t B̃_tᵀ
        state = alpha[..., None, None] * state + beta[..., None, None] * prev + gamma[..., None, None] * cur
        prev = cur
        y_t = (state @ c_t[..., None]).squeeze(-1)  # H_t C̃_t
        if D is not None:
            y_t = y_t + D[:, None] * x[:, t]  # + D x_t
        ys.append(y_t)
    return torch.stack(ys, dim=1)


def ssd_quadratic(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    lam: Tensor | None = None,
    omega: Tensor | None = None,
) -> Tensor:
    """Naive dual form with a full L×L causal mask: ``y = (L ∘ C̃ B̃ᵀ) diag(s) x − c (C̃·B̃) x + D x``. O(L²)."""
    B, C = position_aware_bc(B, C, dt, omega)
    s, c = _trapezoid_weights(dt, lam)
    a = (dt * A).transpose(1, 2)  # (b, h, l)
    mask = torch.exp(segsum(a))  # (b, h, t, s)
    scores = torch.einsum("bthn,bshn->bhts", C, B) * mask
    y = torch.einsum("bhts,bshp->bthp", scores, x * s.unsqueeze(-1))
    if c is not None:
        y = y - (c * (C * B).sum(-1)).unsqueeze(-1) * x
    if D is not None:
        y = y + D[:, None] * x
    return y
