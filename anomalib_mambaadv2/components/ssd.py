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
    "is_tracing",
    "position_aware_bc",
    "rotate_pairs",
    "segsum",
    "ssd",
    "ssd_quadratic",
    "ssd_reference",
    "ssd_sequences",
]


# --------------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------------
def is_tracing() -> bool:
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
    if not is_tracing() and bool(torch.isnan(dt).any()):
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
    return _segsum_st(a, exclusive=False).transpose(-1, -2)


def _segsum_st(a: Tensor, exclusive: bool) -> Tensor:
    """:func:`segsum` laid out ``[..., s, t]`` (source, target), so the cumulative sum runs along the contiguous dim.

    ``exclusive=True`` gives ``Σ_{r=s+1..t-1} a_r`` for ``s < t`` and ``-inf`` for ``t <= s``.
    """
    q = a.shape[-1]
    ones = torch.ones(q, q, dtype=torch.bool, device=a.device)
    if exclusive:  # shift by one token: Σ_{r=s+1..t-1} a_r = Σ_{r'=s+2..t} a_{r'-1}
        a = torch.cat((torch.zeros_like(a[..., :1]), a[..., :-1]), dim=-1)
    start = 2 if exclusive else 1
    terms = a.unsqueeze(-2).masked_fill(~torch.triu(ones, start), 0.0)  # [s, t] = a_t for t >= s + start
    out = torch.cumsum(terms, dim=-1)  # Σ_{s+start<=r<=t} a_r
    return out.masked_fill(~torch.triu(ones, start - 1), -torch.inf)


def rotate_pairs(v: Tensor, theta: Tensor) -> Tensor:
    """Rotate adjacent pairs ``(2i, 2i+1)`` of ``v`` (…, N) by ``theta`` (…, S) for ``i < S``; keep the rest."""
    s = theta.shape[-1]
    even, odd = v[..., 0 : 2 * s : 2], v[..., 1 : 2 * s : 2]
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat((rotated, v[..., 2 * s :]), dim=-1)


def _rotate_halves(B: Tensor, C: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate B and C by ``theta`` (…, S) with the pairs laid out in halves: dims ``(i, S+i)`` for ``i < S``.

    The same rotation as :func:`rotate_pairs` on a fixed relabelling of the state dims (the "rotate-half" layout of
    rotary embeddings): contiguous slices instead of stride-2 ones, which matters most in exported graphs. cos and
    sin are computed once for both.
    """
    s = theta.shape[-1]
    cos, sin = torch.cos(theta), torch.sin(theta)

    def rot(v: Tensor) -> Tensor:
        first, second = v[..., :s], v[..., s : 2 * s]
        rot_first = torch.addcmul(first * cos, second, sin, value=-1.0)  # first·cos − second·sin
        rot_second = torch.addcmul(first * sin, second, cos)  # first·sin + second·cos
        return torch.cat((rot_first, rot_second, v[..., 2 * s :]), dim=-1)

    return rot(B), rot(C)


def _adjacent_to_halves(v: Tensor, pairs: int) -> Tensor:
    """Relabel state dims from adjacent pairs ``(2i, 2i+1)`` to halves ``(i, S+i)``; the rest stays in place."""
    return torch.cat((v[..., 0 : 2 * pairs : 2], v[..., 1 : 2 * pairs : 2], v[..., 2 * pairs :]), dim=-1)


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
    theta = _angles(omega, dt)  # (b, l, h, s)
    return rotate_pairs(B, theta), rotate_pairs(C, theta)


def _angles(omega: Tensor, dt: Tensor) -> Tensor:
    """θ_t = (Σ_{s<=t} ω_s Δ_s) mod 2π along dim 1; ``omega`` is ``dt``'s shape plus a trailing pairs dim."""
    # θ grows like a random walk along the sequence; a float32 running sum would lose ~1e-5 rad over a few hundred
    # tokens, so accumulate in float64 and wrap before going back to the working precision.
    theta = torch.cumsum((omega * dt.unsqueeze(-1)).double(), dim=1)
    return torch.remainder(theta, 2 * math.pi).to(dt.dtype)


def _trapezoid_weights(dt: Tensor, lam: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Input scale s_t = λ_t Δ_t + (1-λ_{t+1}) Δ_{t+1} and diagonal correction c_t = (1-λ_{t+1}) Δ_{t+1}.

    The sequence runs along dim 1 of ``dt`` and ``lam``; the last token has Δ_{L+1} := 0.
    """
    if lam is None:
        return dt, None
    w = (1.0 - lam) * dt
    nxt = torch.cat((w[:, 1:], torch.zeros_like(w[:, :1])), dim=1)  # (1-λ_{t+1}) Δ_{t+1}
    return lam * dt + nxt, nxt


# Largest |exponent| the factorised within-chunk decay may use: e^±60 keeps every factor, product and sum of a chunk
# far inside float32's normal range (1e-38..3e38), so the factorisation loses nothing to overflow or underflow.
FACTOR_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}


def _chunked_scan(
    x: Tensor, a: Tensor, B: Tensor, C: Tensor, chunk_size: int, factorise: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Causal SSD ``y_t = Σ_{s<=t} exp(Σ_{r=s+1..t} a_r) (C_t·B_s) x_s`` in chunks of ``chunk_size`` tokens.

    Every sequence (batch × head × direction) is independent, so all work is batched matrix products over
    (sequences · chunks) with contiguous operands.

    Inside a chunk the decay ``exp(cum_t − cum_s)`` (``cum`` = in-chunk cumulative log-decay) factorises into
    ``exp(cum_t − m) · exp(m − cum_s)``, re-centred on ``m`` = half the chunk's total so both factors stay within
    ``exp(±span/2)``: the decay then scales ``x`` and ``y`` per token and the q×q work is one causal mask, with no
    segment sum and no q×q ``exp``. That is exact while ``span/2 <=`` :data:`FACTOR_LIMIT`; beyond it (very strong
    decay over a chunk) the stable segment-sum form runs instead.

    Args:
        x: Input already scaled by the discretisation weight, (S, L, P).
        a: Log-decay ``Δ_t A_t`` (<= 0), (S, L).
        B: Input projection, (S, L, N).
        C: Output projection, (S, L, N).
        chunk_size: Tokens per chunk Q; cost is O(L·Q·(N+P) + L·N·P).
        factorise: True: factorised form (the caller guarantees the span bound); False: segment-sum form; None:
            factorised where every chunk's span is within the bound (checked on the data), else segment sums;
            while tracing, where the data cannot be checked, None means segment sums.

    Returns:
        y (S, L, P) and the diagonal ``C_t·B_t`` (S, L), which the trapezoid correction needs.
    """
    S, l, p = x.shape
    n, q = B.shape[-1], chunk_size
    pad = (-l) % q
    if pad:  # zero input and zero decay in the padding: it changes nothing before the crop
        x, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (x, B, C))
        a = F.pad(a, (0, pad))
    nc = (l + pad) // q
    x, B, C = (t.reshape(S * nc, q, -1) for t in (x, B, C))
    a = a.reshape(S, nc, q)
    a_cum = torch.cumsum(a, dim=-1)  # cum_t = Σ_{r<=t} a_r inside the chunk
    if factorise is None:
        factorise = not is_tracing() and bool(-a_cum[..., -1].min() <= 2 * FACTOR_LIMIT[a.dtype])

    if factorise:
        # 1. within each chunk: y_t = e^{cum_t − m} Σ_{s<=t} (C_t·B_s) e^{m − cum_s} x_s
        mid = 0.5 * a_cum[..., -1:]  # m
        x_in = x * torch.exp(mid - a_cum).reshape(S * nc, q, 1)  # e^{m − cum_s} x_s
        scores = torch.bmm(C, B.transpose(1, 2))  # [t, s] = C_t·B_s
        cb = scores.diagonal(dim1=1, dim2=2)
        y = torch.bmm(torch.tril(scores), x_in) * torch.exp(a_cum - mid).reshape(S * nc, q, 1)
        # 2. each chunk's final state: Σ_s e^{cum_last − cum_s} B_sᵀ x_s = e^{cum_last − m} Bᵀ (e^{m − cum} x)
        states = torch.bmm(B.transpose(1, 2), x_in) * torch.exp(a_cum[..., -1:] - mid).reshape(S * nc, 1, 1)
    else:
        # 1. within each chunk: the quadratic masked form (L ∘ C Bᵀ) x
        #    (matrices laid out [s, t], source by target, so the segment sums run along the contiguous dim)
        decay = torch.exp(_segsum_st(a, exclusive=False)).reshape(S * nc, q, q)  # exp(Σ_{r=s+1..t} a_r), 0 if t < s
        scores = torch.bmm(B, C.transpose(1, 2))  # B_s·C_t
        cb = scores.diagonal(dim1=1, dim2=2)  # C_t·B_t (the mask is 1 there)
        y = torch.bmm((scores * decay).transpose(1, 2), x)
        # 2. each chunk's final state: Σ_s exp(Σ_{r>s} a_r) B_sᵀ x_s (the decay matrix's last column). Scaling Bᵀ
        #    (a row vector broadcast along the contiguous dim) is several times faster on CPU than scaling B.
        states = torch.bmm(B.transpose(1, 2) * decay[:, None, :, -1], x)
    states = states.reshape(S, nc, n * p)

    # 3. recurrence over chunk states H_c = exp(A_{c-1}) H_{c-1} + S_{c-1}: its matrix form while the chunks fit in
    #    one chunk, else the same chunked routine on the state sequence (B = C = 1), which keeps the cost linear in L
    a_chunk = a_cum[..., -1]  # (S, c): total log-decay of each chunk
    if nc <= q or q < 2:
        chunk_decay = torch.exp(_segsum_st(a_chunk, exclusive=True))  # [c, z] = exp(Σ_{r=c+1..z-1} a_r), c < z
        h_in = torch.bmm(chunk_decay.transpose(1, 2), states)  # state entering chunk z: Σ_{c<z} decay · S_c
    else:
        ones = states.new_ones(S, nc, 1)
        summed, _ = _chunked_scan(states, a_chunk, ones, ones, q)  # state leaving each chunk
        h_in = F.pad(summed, (0, 0, 1, 0))[:, :-1]  # shift: state entering chunk c

    # 4. contribution of the incoming state: exp(Σ_{r<=t} a_r) C_t·H_in
    c_in = (C.transpose(1, 2) * torch.exp(a_cum).reshape(S * nc, 1, q)).transpose(1, 2)
    y = torch.baddbmm(y, c_in, h_in.reshape(S * nc, n, p))
    return y.reshape(S, nc * q, p)[:, :l], cb.reshape(S, nc * q)[:, :l]


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


def _fused_scan(x: Tensor, a: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`_chunked_scan`, on ``mamba_chunk_scan_combined`` (one head per sequence).

    The kernel takes a per-head constant ``A`` and scales the input by its ``dt``. A per-token decay folds in
    exactly: ``dt' = -a`` with ``A' = -1`` gives the decay, and ``x / dt'`` undoes the kernel's input scaling.
    """
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    dt_k = (-a).clamp_min(1e-12)
    a_k = -torch.ones(1, device=x.device, dtype=torch.float32)
    x_k = (x / dt_k[..., None])[:, :, None]  # (S, L, 1 head, P)
    y = mamba_chunk_scan_combined(x_k, dt_k[..., None], a_k, B[:, :, None], C[:, :, None], chunk_size)
    return y[:, :, 0], (C * B).sum(-1)


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
    chunk_size: int = 32,
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
    b, l, h, p = x.shape

    def seqs(t: Tensor | None) -> Tensor | None:  # (b, l, h, ...) → (b·h, l, ...): one sequence per head
        return None if t is None else t.transpose(1, 2).reshape(b * h, l, *t.shape[3:])

    if omega is not None:  # ssd_sequences pairs state dims (i, S+i); here they come as (2i, 2i+1)
        B, C = _adjacent_to_halves(B, omega.shape[-1]), _adjacent_to_halves(C, omega.shape[-1])
        if omega.ndim == 3:
            omega = omega.unsqueeze(2).expand(b, l, h, omega.shape[-1])
    y = ssd_sequences(
        seqs(x), seqs(dt), seqs(A), seqs(_heads(B, h)), seqs(_heads(C, h)),
        None if D is None else D.repeat(b), seqs(lam), seqs(omega), chunk_size=chunk_size, backend=backend,
    )  # fmt: skip
    return y.reshape(b, h, l, p).transpose(1, 2)


def ssd_sequences(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    lam: Tensor | None = None,
    omega: Tensor | None = None,
    matrix_gain: Tensor | None = None,
    chunk_size: int = 32,
    backend: Backend = "torch",
    max_log_decay: float | None = None,
) -> Tensor:
    """:func:`ssd` on independent single-head sequences (S = batch × heads × …), plus the optional matrix path.

    The layout the HSS block works in: every (image, head, scan direction) is one sequence, so the scan is a few
    batched matrix products with no layout changes. Shapes are not re-checked here; :func:`ssd` checks them.

    Args:
        x: (S, L, P).
        dt: Δ, (S, L).
        A: Decay rates, (S, L).
        B: (S, L, N), one per sequence (already broadcast from groups).
        C: (S, L, N).
        D: Optional skip weight per sequence, (S,).
        lam: Optional trapezoid weights, (S, L).
        omega: Optional angle rates, (S, L, pairs). Unlike :func:`ssd`, the rotated pairs of B and C are the state
            dims ``(i, pairs+i)`` (a relabelling of the state that leaves every output unchanged).
        matrix_gain: Optional gain g per sequence, (S,): adds the HSS matrix path ``g (1/L) C̃ (B̃ᵀ x̄)``, the dual
            form of the same discretised SSM (input x̄ = s ⊙ x) with an all-ones mask, in O(L·N·P).
        chunk_size: Tokens per chunk.
        backend: See :func:`ssd`.
        max_log_decay: A bound the caller guarantees on ``−Δ_t A_t`` for every token. Where ``chunk_size ·
            max_log_decay`` fits the factorised decay's range, that form runs unchecked (also in exported graphs);
            otherwise the range is checked on the data in eager mode, and traced graphs use segment sums.

    Returns:
        (S, L, P), dtype of ``x``.
    """
    if chunk_size < 1:
        msg = f"`chunk_size` must be a positive integer, got {chunk_size}."
        raise ValueError(msg)
    if backend not in {"auto", "torch", "fused"}:
        msg = f"`backend` must be 'auto', 'torch' or 'fused', got {backend!r}."
        raise ValueError(msg)
    use_fused = backend == "fused" or (backend == "auto" and x.is_cuda and not is_tracing() and fused_available())
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
        if omega is not None:  # B̃, C̃: rotated by θ_t = (Σ_{s<=t} ω_s Δ_s) mod 2π
            B, C = _rotate_halves(B, C, _angles(omega.to(dtype), dt))
        s, c = _trapezoid_weights(dt, None if lam is None else lam.to(dtype))
        xs = x * s.unsqueeze(-1)  # x̄_t = s_t x_t
        if use_fused:
            y, cb = _fused_scan(xs, dt * A, B, C, chunk_size)
        else:
            bounded = max_log_decay is not None and chunk_size * max_log_decay <= 2 * FACTOR_LIMIT[dtype]
            y, cb = _chunked_scan(xs, dt * A, B, C, chunk_size, factorise=True if bounded else None)
        # per-token skip: + D x_t, and − c_t (C̃_t·B̃_t) x_t, the term that s_t over-counts at s = t
        skip = None if c is None else -c * cb
        if D is not None:
            skip = D.to(dtype)[:, None] if skip is None else skip + D.to(dtype)[:, None]
        if skip is not None:
            y = torch.addcmul(y, skip.unsqueeze(-1), x)
        if matrix_gain is not None:  # (g/L) C̃ (B̃ᵀ x̄), right to left
            state = torch.bmm(B.transpose(1, 2), xs) * (matrix_gain.to(dtype) / x.shape[1])[:, None, None]
            y = torch.baddbmm(y, C, state)
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
