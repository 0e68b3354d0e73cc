# SPDX-License-Identifier: Apache-2.0
"""The batched 4-D SSD API and slow references, for tests and benchmarks (the model runs ``ssd.ssd_sequences``).

Everything here works on ``(batch, length, heads, ·)`` tensors, with ``B`` and ``C`` in groups of heads, and uses the
state layout of :func:`~anomalib_mambaadv2.components.ssd.ssd_sequences`: ``omega`` rotates state dims ``(i, S+i)``.

Public functions:
    * :func:`ssd` — the layer, chunked (linear in ``L``): checks its inputs and runs ``ssd_sequences``.
    * :func:`global_matrix_mix` — the HSS matrix path ``(1/L) C̃ (B̃ᵀ x)`` in O(L·N·P), per head.
    * :func:`position_aware_bc` — B̃, C̃ per head (broadcast to heads and rotated).
    * :func:`segsum` — the stable segment sum, laid out ``[t, s]``.
    * :func:`ssd_reference` — the step-by-step recurrence, the ground truth for the tests.
    * :func:`ssd_quadratic` — the naive L×L masked matrix form, for tests and benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ssd import Backend, _angles, _rotate_halves, _segsum_st, _trapezoid_weights, is_tracing, ssd_sequences

__all__ = ["global_matrix_mix", "position_aware_bc", "segsum", "ssd", "ssd_quadratic", "ssd_reference"]


# --------------------------------------------------------------------------------------------------------------------
# Input checks and layout
# --------------------------------------------------------------------------------------------------------------------
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


def _heads(v: Tensor, h: int) -> Tensor:
    """Broadcast B or C from G groups to H heads: (b, l, g, n) -> (b, l, h, n)."""
    g = v.shape[2]
    return v if g == h else v.repeat_interleave(h // g, dim=2)


def _omega_per_head(omega: Tensor | None, b: int, l: int, h: int) -> Tensor | None:
    """``omega`` shared over heads, (b, l, pairs), expanded to (b, l, h, pairs); per-head or None unchanged."""
    if omega is None or omega.ndim == 4:
        return omega
    return omega.unsqueeze(2).expand(b, l, h, omega.shape[-1])


def segsum(a: Tensor) -> Tensor:
    """Stable segment sum: ``out[..., t, s] = Σ_{r=s+1..t} a[..., r]`` for ``s <= t``, ``-inf`` above the diagonal.

    Built as a cumulative sum over a masked, repeated matrix rather than ``cumsum[t] - cumsum[s]``, which loses
    precision when the cumulative log-decay grows large.

    Args:
        a: Log-decays along the last dim, (..., L).

    Returns:
        (..., L, L), laid out ``[t, s]``.
    """
    return _segsum_st(a, exclusive=False).transpose(-1, -2)


def position_aware_bc(B: Tensor, C: Tensor, dt: Tensor, omega: Tensor | None) -> tuple[Tensor, Tensor]:
    """B̃, C̃ per head: B, C broadcast to heads and dims ``(i, S+i)`` rotated by θ_t = (Σ_{s<=t} ω_s Δ_s) mod 2π.

    Args:
        B: (batch, length, groups, state).
        C: same shape as ``B``.
        dt: Step sizes Δ, (batch, length, heads).
        omega: Angle rates, (batch, length, pairs) or (batch, length, heads, pairs); None for no rotation.

    Returns:
        B̃ and C̃, each (batch, length, heads, state).
    """
    h = dt.shape[-1]
    B, C = _heads(B, h), _heads(C, h)
    if omega is None:
        return B, C
    if omega.ndim == 3:  # shared over heads
        omega = omega.unsqueeze(2)
    return _rotate_halves(B, C, _angles(omega, dt))  # θ: (b, l, h, pairs)


# --------------------------------------------------------------------------------------------------------------------
# The 4-D API
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

    Checks its inputs, then runs :func:`~anomalib_mambaadv2.components.ssd.ssd_sequences` with one sequence per
    (batch, head). Δ, cumulative sums, exponentials and states are computed in float32 (float64 stays float64)
    whatever the autocast context; the result has the dtype of ``x``.

    Args:
        x: Input, (batch, length, heads, headdim).
        dt: Step sizes Δ > 0, (batch, length, heads).
        A: Data-dependent decay rates A < 0, (batch, length, heads).
        B: Input projections, (batch, length, groups, state); heads must be a multiple of groups.
        C: Output projections, same shape as ``B``.
        D: Optional skip weight per head, (heads,).
        lam: Optional trapezoid weights λ in (0, 1), (batch, length, heads). None means λ ≡ 1 (Euler, Mamba-2).
        omega: Optional angle rates ω, (batch, length, pairs) or (batch, length, heads, pairs) with
            ``2·pairs <= state``; state dims ``(i, pairs+i)`` rotate together. None means no rotation.
        chunk_size: Tokens per chunk.
        backend: ``"torch"``, ``"fused"`` or ``"auto"``, see :func:`~anomalib_mambaadv2.components.ssd.ssd_sequences`.

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

    y = ssd_sequences(
        seqs(x), seqs(dt), seqs(A), seqs(_heads(B, h)), seqs(_heads(C, h)),
        None if D is None else D.repeat(b), seqs(lam), seqs(_omega_per_head(omega, b, l, h)),
        chunk_size=chunk_size, backend=backend,
    )  # fmt: skip
    return y.reshape(b, h, l, p).transpose(1, 2)


def global_matrix_mix(x: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """HSS matrix path: the dual form with an all-ones mask, ``y = (1/L) C (Bᵀ x)`` per head.

    Evaluated right to left (state N×P per head), never as an L×L matrix. Computed in float32 like :func:`ssd`.

    Args:
        x: (batch, length, heads, headdim).
        B: (batch, length, groups, state), heads a multiple of groups.
        C: same shape as ``B``.

    Returns:
        (batch, length, heads, headdim), dtype of ``x``.

    Raises:
        ValueError: On mismatched shapes.
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
# Slow references
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
    """Step-by-step recurrence, one token at a time. Slow and obvious: the ground truth for :func:`ssd`.

    Shares no code with the chunked scan: θ is a running sum and each pair of state dims ``(i, S+i)`` is rotated by
    an explicit 2×2 matrix.

    Args:
        x: Input, (batch, length, heads, headdim).
        dt: Step sizes Δ, (batch, length, heads).
        A: Decay rates, (batch, length, heads).
        B: Input projections, (batch, length, groups, state).
        C: Output projections, same shape as ``B``.
        D: Optional skip weight per head, (heads,).
        lam: Optional trapezoid weights, (batch, length, heads); None means λ ≡ 1.
        omega: Optional angle rates, (batch, length, pairs) or (batch, length, heads, pairs).

    Returns:
        Output y, shaped like ``x``.
    """
    b, l, h, p = x.shape
    n = B.shape[-1]
    B, C = _heads(B, h), _heads(C, h)
    lam = torch.ones_like(dt) if lam is None else lam
    omega = _omega_per_head(omega, b, l, h)
    state = x.new_zeros(b, h, p, n)  # H_t
    prev = x.new_zeros(b, h, p, n)  # x_{t-1} B̃_{t-1}ᵀ
    theta = x.new_zeros(b, h, 0 if omega is None else omega.shape[-1])
    s = theta.shape[-1]

    def rotate(v: Tensor, rot: Tensor) -> Tensor:  # (v_i, v_{S+i}) ← rot_i (v_i, v_{S+i}) for i < S
        pairs = torch.stack((v[..., :s], v[..., s : 2 * s]), -1)[..., None]  # (b, h, S, 2, 1)
        turned = (rot @ pairs)[..., 0]  # (b, h, S, 2)
        return torch.cat((turned[..., 0], turned[..., 1], v[..., 2 * s :]), -1)

    ys = []
    for t in range(l):
        b_t, c_t = B[:, t], C[:, t]
        if omega is not None:
            theta = theta + omega[:, t] * dt[:, t, :, None]  # θ_t = θ_{t-1} + ω_t Δ_t
            rot = torch.stack(  # 2×2 rotation per pair: [[cos, -sin], [sin, cos]]
                (torch.stack((theta.cos(), -theta.sin()), -1), torch.stack((theta.sin(), theta.cos()), -1)), -2
            )
            b_t, c_t = rotate(b_t, rot), rotate(c_t, rot)  # B̃_t, C̃_t
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
    """Naive dual form with a full L×L causal mask: ``y = (L ∘ C̃ B̃ᵀ) diag(s) x − c (C̃·B̃) x + D x``. O(L²).

    Args:
        x: Input, (batch, length, heads, headdim).
        dt: Step sizes Δ, (batch, length, heads).
        A: Decay rates, (batch, length, heads).
        B: Input projections, (batch, length, groups, state).
        C: Output projections, same shape as ``B``.
        D: Optional skip weight per head, (heads,).
        lam: Optional trapezoid weights, (batch, length, heads); None means λ ≡ 1.
        omega: Optional angle rates, (batch, length, pairs) or (batch, length, heads, pairs).

    Returns:
        Output y, shaped like ``x``.
    """
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
