# SPDX-License-Identifier: Apache-2.0
"""Chunked, position-aware state-space duality (SSD) in plain PyTorch: the scan the HSS block runs.

Per sequence (head dim ``P``, state size ``N``) and token ``t`` the layer computes (see ``docs/design.md`` §2)::

    H_t = α_t H_{t-1} + β_t x_{t-1} B̃_{t-1}ᵀ + γ_t x_t B̃_tᵀ        y_t = H_t C̃_t + D x_t
    α_t = exp(Δ_t A_t)    β_t = (1 - λ_t) Δ_t α_t    γ_t = λ_t Δ_t     (exponential-trapezoidal, Mamba-3)
    B̃_t, C̃_t = B_t, C_t with dims (i, S+i) rotated by θ_t = Σ_{s<=t} ω_s Δ_s   (data-dependent rotary, Mamba-3)

``λ ≡ 1`` and ``ω ≡ 0`` give back Mamba-2. In matrix ("dual") form this is SSD with the input scaled per token by
``s_t = λ_t Δ_t + (1 - λ_{t+1}) Δ_{t+1}`` minus the diagonal term ``c_t (C̃_t·B̃_t) x_t``,
``c_t = (1 - λ_{t+1}) Δ_{t+1}``, so one chunked SSD routine serves every variant.

The entry point is :func:`ssd_sequences` (independent single-head sequences, as the HSS block lays them out); it
dispatches to ``mamba_ssm``'s kernels on request. The batched 4-D wrapper ``ssd``, the matrix-path helper and the
slow references the tests and benchmarks compare against live in
:mod:`~anomalib_mambaadv2.components.ssd_reference`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "torch", "fused"]

__all__ = ["FACTOR_LIMIT", "Backend", "fused_available", "is_tracing", "ssd_sequences"]

# Largest |exponent| the factorised within-chunk decay may use: e^±60 keeps every factor, product and sum of a chunk
# far inside float32's normal range (1e-38..3e38), so the factorisation loses nothing to overflow or underflow.
FACTOR_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}


def is_tracing() -> bool:
    """True while torch.export / dynamo / TorchScript trace the graph (data-dependent checks must be skipped)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------
def _segsum_st(a: Tensor, exclusive: bool) -> Tensor:
    """Stable segment sum laid out ``[..., s, t]`` (source, target): ``Σ_{r=s+1..t} a_r`` for ``s <= t``, else -inf.

    A cumulative sum over a masked, repeated matrix rather than ``cumsum[t] - cumsum[s]``, which loses precision when
    the cumulative log-decay grows large; it runs along the contiguous dim. ``exclusive=True`` gives
    ``Σ_{r=s+1..t-1} a_r`` for ``s < t`` and ``-inf`` for ``t <= s``.
    """
    q = a.shape[-1]
    ones = torch.ones(q, q, dtype=torch.bool, device=a.device)
    if exclusive:  # shift by one token: Σ_{r=s+1..t-1} a_r = Σ_{r'=s+2..t} a_{r'-1}
        a = torch.cat((torch.zeros_like(a[..., :1]), a[..., :-1]), dim=-1)
    start = 2 if exclusive else 1
    terms = a.unsqueeze(-2).masked_fill(~torch.triu(ones, start), 0.0)  # [s, t] = a_t for t >= s + start
    out = torch.cumsum(terms, dim=-1)  # [s, t] = Σ_{s+start<=r<=t} a_r
    return out.masked_fill(~torch.triu(ones, start - 1), -torch.inf)  # -inf where t < s + start - 1


def _angles(omega: Tensor, dt: Tensor) -> Tensor:
    """θ_t = (Σ_{s<=t} ω_s Δ_s) mod 2π along dim 1; ``omega`` is ``dt``'s shape plus a trailing pairs dim."""
    # θ grows like a random walk along the sequence; a float32 running sum would lose ~1e-5 rad over a few hundred
    # tokens, so accumulate in float64 and wrap before going back to the working precision.
    theta = torch.cumsum((omega * dt.unsqueeze(-1)).double(), dim=1)  # θ_t = Σ_{s<=t} ω_s Δ_s
    return torch.remainder(theta, 2 * math.pi).to(dt.dtype)  # θ_t mod 2π


def _rotate_halves(B: Tensor, C: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """B̃, C̃: the pairs of state dims ``(i, S+i)``, ``i < S``, of B and C rotated by ``theta`` (…, S); the rest kept.

    The "rotate-half" layout of rotary embeddings: contiguous slices rather than stride-2 ones, which matters most in
    exported graphs. cos and sin are computed once for both.
    """
    s = theta.shape[-1]
    cos, sin = torch.cos(theta), torch.sin(theta)

    def rot(v: Tensor) -> Tensor:
        first, second = v[..., :s], v[..., s : 2 * s]  # v_i, v_{S+i}
        rot_first = torch.addcmul(first * cos, second, sin, value=-1.0)  # v_i cos θ − v_{S+i} sin θ
        rot_second = torch.addcmul(first * sin, second, cos)  # v_i sin θ + v_{S+i} cos θ
        return torch.cat((rot_first, rot_second, v[..., 2 * s :]), dim=-1)  # dims >= 2S unrotated

    return rot(B), rot(C)


def _trapezoid_weights(dt: Tensor, lam: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Input scale s_t = λ_t Δ_t + (1-λ_{t+1}) Δ_{t+1} and diagonal correction c_t = (1-λ_{t+1}) Δ_{t+1}.

    The sequence runs along dim 1 of ``dt`` and ``lam``; the last token has Δ_{L+1} := 0. ``lam=None`` (Euler) gives
    ``s = Δ`` and no correction.
    """
    if lam is None:
        return dt, None  # s_t = Δ_t, c_t = 0
    w = (1.0 - lam) * dt  # (1-λ_t) Δ_t
    nxt = torch.cat((w[:, 1:], torch.zeros_like(w[:, :1])), dim=1)  # c_t = (1-λ_{t+1}) Δ_{t+1}
    return lam * dt + nxt, nxt  # s_t = λ_t Δ_t + c_t


def _chunked_scan(
    x: Tensor,
    a: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    factorise: bool | None = None,
    x_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Causal SSD ``y_t = Σ_{s<=t} exp(Σ_{r=s+1..t} a_r) (C_t·B_s) x_s`` in chunks of ``chunk_size`` tokens.

    Every sequence is independent, so all work is batched matrix products over (sequences · chunks) with contiguous
    operands.

    Inside a chunk the decay ``exp(cum_t − cum_s)`` (``cum`` = in-chunk cumulative log-decay) factorises into
    ``exp(cum_t − m) · exp(m − cum_s)``, re-centred on ``m`` = half the chunk's total so both factors stay within
    ``exp(±span/2)``: the decay then scales ``C`` and ``B`` per token (N wide, cheaper than scaling ``x`` and ``y``,
    P wide) and the q×q work is one causal mask, with no segment sum and no q×q ``exp``. That is exact while
    ``span/2 <=`` :data:`FACTOR_LIMIT`; beyond it (very strong decay over a chunk) the stable segment-sum form runs
    instead.

    Args:
        x: Input, (S, L, P).
        a: Log-decay ``Δ_t A_t`` (<= 0), (S, L).
        B: Input projection, (S, L, N).
        C: Output projection, (S, L, N).
        chunk_size: Tokens per chunk Q; cost is O(L·Q·(N+P) + L·N·P).
        factorise: True: factorised form (the caller guarantees the span bound); False: segment-sum form; None:
            factorised where every chunk's span is within the bound (checked on the data), else segment sums;
            while tracing, where the data cannot be checked, None means segment sums.
        x_scale: Optional per-token input scale, (S, L): the scan reads ``x_scale ⊙ x`` (folded into ``B``, so no
            scaled copy of ``x`` is made).

    Returns:
        y (S, L, P) and the diagonal ``C_t·B_t`` (S, L), which the trapezoid correction needs.
    """
    S, l, p = x.shape
    n, q = B.shape[-1], chunk_size
    pad = (-l) % q
    if x_scale is None:
        x_scale = x.new_ones(S, l)
    if pad:  # zero input and zero decay in the padding: it changes nothing before the crop
        x, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (x, B, C))
        a, x_scale = F.pad(a, (0, pad)), F.pad(x_scale, (0, pad))
    nc = (l + pad) // q
    x, B, C = (t.reshape(S * nc, q, -1) for t in (x, B, C))  # (S·chunks, Q, ·)
    a = a.reshape(S, nc, q)
    a_cum = torch.cumsum(a, dim=-1)  # cum_t = Σ_{r<=t} a_r inside the chunk
    if factorise is None:  # span_c = −cum_last of chunk c; factorised iff max_c span_c <= 2 · FACTOR_LIMIT
        factorise = not is_tracing() and bool(-a_cum[..., -1].min() <= 2 * FACTOR_LIMIT[a.dtype])

    cb = (C * B).sum(-1)  # C_t·B_t, which the trapezoid correction needs
    # (s_s B_s)ᵀ: the input scale and the decays below scale B and C (N wide), never x or y (P wide). Scaling Bᵀ
    # (a row vector broadcast along the contiguous dim) is several times faster on CPU than scaling B.
    b_t = B.transpose(1, 2) * x_scale.reshape(S * nc, 1, q)
    if factorise:
        # 1. within each chunk: y_t = Σ_{s<=t} (e^{cum_t − m} C_t)·(e^{m − cum_s} s_s B_s) x_s, one causal mask
        mid = 0.5 * a_cum[..., -1:]  # m = cum_last / 2
        c_out = (C.transpose(1, 2) * torch.exp(a_cum - mid).reshape(S * nc, 1, q)).transpose(1, 2)  # e^{cum_t − m} C_t
        b_in = b_t * torch.exp(mid - a_cum).reshape(S * nc, 1, q)  # (e^{m − cum_s} s_s B_s)ᵀ
        y = torch.bmm(torch.bmm(c_out, b_in).tril_(), x)  # the mask in place: bmm's backward needs only its inputs
        # 2. each chunk's final state: Σ_s e^{cum_last − cum_s} s_s B_sᵀ x_s
        states = torch.bmm(b_t * torch.exp(a_cum[..., -1:] - a_cum).reshape(S * nc, 1, q), x)
    else:
        # 1. within each chunk: the quadratic masked form (L ∘ C Bᵀ) x
        #    (matrices laid out [s, t], source by target, so the segment sums run along the contiguous dim)
        decay = torch.exp(_segsum_st(a, exclusive=False)).reshape(S * nc, q, q)  # exp(Σ_{r=s+1..t} a_r), 0 if t < s
        scores = torch.bmm(b_t.transpose(1, 2), C.transpose(1, 2))  # [s, t] = s_s B_s·C_t
        y = torch.bmm((scores * decay).transpose(1, 2), x)  # y_t = Σ_s L[t, s] (C_t·B_s) s_s x_s
        # 2. each chunk's final state: Σ_s exp(Σ_{r>s} a_r) s_s B_sᵀ x_s (the decay matrix's last column)
        states = torch.bmm(b_t * decay[:, None, :, -1], x)
    states = states.reshape(S, nc, n * p)  # S_c, flattened N·P

    # 3. recurrence over chunk states H_c = exp(A_{c-1}) H_{c-1} + S_{c-1}: its matrix form while the chunks fit in
    #    one chunk, else the same chunked routine on the state sequence (B = C = 1), which keeps the cost linear in L
    a_chunk = a_cum[..., -1]  # (S, c): A_c, total log-decay of chunk c
    if nc <= q or q < 2:
        chunk_decay = torch.exp(_segsum_st(a_chunk, exclusive=True))  # [c, z] = exp(Σ_{r=c+1..z-1} A_r), c < z
        h_in = torch.bmm(chunk_decay.transpose(1, 2), states)  # state entering chunk z: Σ_{c<z} decay · S_c
    else:
        ones = states.new_ones(S, nc, 1)
        summed, _ = _chunked_scan(states, a_chunk, ones, ones, q)  # state leaving each chunk
        h_in = F.pad(summed, (0, 0, 1, 0))[:, :-1]  # shift: state entering chunk c

    # 4. contribution of the incoming state: y_t += exp(Σ_{r<=t} a_r) C_t·H_in
    c_in = (C.transpose(1, 2) * torch.exp(a_cum).reshape(S * nc, 1, q)).transpose(1, 2)  # exp(cum_t) C_t
    y = y.baddbmm_(c_in, h_in.reshape(S * nc, n, p))  # in place: backward needs only c_in and h_in
    y, cb = y.reshape(S, nc * q, p), cb.reshape(S, nc * q)
    if pad:  # crop the padding (a copy, not a view, so callers may update y in place)
        y, cb = y[:, :l].contiguous(), cb[:, :l]
    return y, cb


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

    dt_k = (-a).clamp_min(1e-12)  # dt' = −a
    a_k = -torch.ones(1, device=x.device, dtype=torch.float32)  # A' = −1: dt' A' = a
    x_k = (x / dt_k[..., None])[:, :, None]  # x / dt', (S, L, 1 head, P)
    y = mamba_chunk_scan_combined(x_k, dt_k[..., None], a_k, B[:, :, None], C[:, :, None], chunk_size)
    return y[:, :, 0], (C * B).sum(-1)  # y and C_t·B_t


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------
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
    """Position-aware, exponential-trapezoidal SSD on independent single-head sequences, plus the matrix path.

    The layout the HSS block works in: every (image, head, scan direction) is one sequence (S = batch × heads × …),
    so the scan is a few batched matrix products with no layout changes. Mamba-2 when ``lam`` and ``omega`` are
    None. Shapes are not checked here (the 4-D wrapper ``ssd_reference.ssd`` checks them). Δ, cumulative sums,
    exponentials and states are computed in float32 (float64 stays float64) whatever the autocast context.

    Args:
        x: (S, L, P).
        dt: Step sizes Δ > 0, (S, L).
        A: Data-dependent decay rates A < 0, (S, L).
        B: Input projections, (S, L, N), one per sequence (already broadcast from groups).
        C: Output projections, (S, L, N).
        D: Optional skip weight per sequence, (S,).
        lam: Optional trapezoid weights λ in (0, 1), (S, L). None means λ ≡ 1 (Euler, Mamba-2).
        omega: Optional angle rates ω, (S, L, pairs) with ``2·pairs <= N``: state dims ``(i, pairs+i)`` of B and C
            rotate together. None means no rotation.
        matrix_gain: Optional gain g per sequence, (S,): adds the HSS matrix path ``g (1/L) C̃ (B̃ᵀ x̄)``, the dual
            form of the same discretised SSM (input x̄ = s ⊙ x) with an all-ones mask, in O(L·N·P).
        chunk_size: Tokens per chunk.
        backend: ``"torch"`` (pure PyTorch, exportable), ``"fused"`` (``mamba_ssm`` kernels; an error where they
            cannot run) or ``"auto"`` (fused on CUDA when available, except while exporting).
        max_log_decay: A bound the caller guarantees on ``−Δ_t A_t`` for every token. Where ``chunk_size ·
            max_log_decay`` fits the factorised decay's range, that form runs unchecked (also in exported graphs);
            otherwise the range is checked on the data in eager mode, and traced graphs use segment sums.

    Returns:
        (S, L, P), dtype of ``x``.

    Raises:
        ValueError: On a bad ``chunk_size`` or ``backend``.
        RuntimeError: If ``backend="fused"`` is asked for where the kernels cannot run.
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
        s, c = _trapezoid_weights(dt, None if lam is None else lam.to(dtype))  # s_t, c_t
        if use_fused:  # y_t = Σ_{s<=t} exp(Σ_{r=s+1..t} Δ_r A_r) C̃_t·B̃_s x̄_s with x̄_t = s_t x_t
            y, cb = _fused_scan(x * s.unsqueeze(-1), dt * A, B, C, chunk_size)
            y = y.clone()  # the kernel may keep its output for backward; y is updated in place below
        else:  # the same y_t; x̄ = s ⊙ x is folded into B inside the scan (no scaled copy of x)
            bounded = max_log_decay is not None and chunk_size * max_log_decay <= 2 * FACTOR_LIMIT[dtype]
            y, cb = _chunked_scan(x, dt * A, B, C, chunk_size, factorise=True if bounded else None, x_scale=s)
        # In-place updates of y below: the backward of each needs only its other operands, never y.
        # per-token skip: + D x_t, and − c_t (C̃_t·B̃_t) x_t, the term that s_t over-counts at s = t
        skip = None if c is None else -c * cb  # −c_t (C̃_t·B̃_t)
        if D is not None:
            skip = D.to(dtype)[:, None] if skip is None else skip + D.to(dtype)[:, None]  # + D
        if skip is not None:
            y = y.addcmul_(skip.unsqueeze(-1), x)  # y_t += skip_t x_t
        if matrix_gain is not None:  # y += (g/L) C̃ (B̃ᵀ x̄) = (g/L) C̃ ((s ⊙ B̃)ᵀ x), right to left
            scale = (matrix_gain.to(dtype) / x.shape[1])[:, None] * s  # (g/L) s_t
            state = torch.bmm((B * scale.unsqueeze(-1)).transpose(1, 2), x)  # (g/L) (s ⊙ B̃)ᵀ x
            y = y.baddbmm_(C, state)  # + C̃ · state
    return y.to(out_dtype)
