# SPDX-License-Identifier: Apache-2.0
"""The HSS core's batched fast path against a per-direction, step-by-step reference, for every ablation switch.

The reference below shares no scan code with :class:`~anomalib_mambaadv2.components.hss.HSSCore`: each direction is
gathered with :func:`~anomalib_mambaadv2.components.scanning.scan_permutations`, run through the token-by-token
recurrence :func:`~anomalib_mambaadv2.components.ssd_reference.ssd_reference`, and the matrix path is the explicit
L×L matrix ``(1/L) C̃ B̃ᵀ`` applied to ``s ⊙ x``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from anomalib_mambaadv2.components.hss import MAX_LOG_DECAY, HSSCore
from anomalib_mambaadv2.components.scanning import scan_permutations
from anomalib_mambaadv2.components.ssd_reference import ssd_reference

DIM = 16
SMALL = {"d_state": 8, "headdim": 8, "chunk_size": 4}  # d_inner 32: 4 heads of 8 channels, 2 rotated pairs


def rotate_pairs(v: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs of dims (i, S+i) of ``v`` (…, N) by ``theta`` (…, S), written out with cos and sin."""
    s = theta.shape[-1]
    first, second = v[..., :s], v[..., s : 2 * s]
    cos, sin = theta.cos(), theta.sin()
    return torch.cat((first * cos - second * sin, first * sin + second * cos, v[..., 2 * s :]), -1)


def hss_step_reference(core: HSSCore, u: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """HSSCore.forward, one direction at a time, with the step-by-step SSD and the explicit L×L matrix path.

    Returns:
        The output and whether the decay clamp ``−Δ A <= MAX_LOG_DECAY`` changed any token.
    """
    b, hh, ww, _ = u.shape
    length, nh, p, n = hh * ww, core.nheads, core.headdim, core.d_state
    z, x, Bp, Cp, dt, a, trap, ang = torch.split(core.in_proj(u), core.splits, dim=-1)
    x = F.silu(core.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(b, length, nh, p)
    dt = F.softplus(dt.reshape(b, length, nh) + core.dt_bias)
    A = -F.softplus(a.reshape(b, length, nh) + core.a_bias).clamp_min(1e-4)
    clamped = bool((-dt * A > MAX_LOG_DECAY).any())
    A = torch.where(-dt * A > MAX_LOG_DECAY, -MAX_LOG_DECAY / dt, A)
    lam = torch.sigmoid(trap.reshape(b, length, nh)) if core.use_trapezoid else torch.ones_like(dt)

    def rms(v):
        return v / v.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    Bh = rms(Bp).reshape(b, length, 1, n) + core.B_bias  # (b, L, heads, N): a bias per head
    Ch = rms(Cp).reshape(b, length, 1, n) + core.C_bias
    omega = math.pi * torch.tanh(ang.reshape(b, length, -1)) if core.npairs else None

    perm, inv = scan_permutations(hh, ww, core.scan_curve)
    ys = []
    for k in core.directions:
        pk = perm[k]
        xk, dtk, Ak, lamk, Bk, Ck = x[:, pk], dt[:, pk], A[:, pk], lam[:, pk], Bh[:, pk], Ch[:, pk]
        omk = None if omega is None else omega[:, pk]
        yk = ssd_reference(xk, dtk, Ak, Bk, Ck, None, lamk if core.use_trapezoid else None, omk)
        if core.gain is not None:
            s_k = lamk * dtk  # s_t = λ_t Δ_t + (1 − λ_{t+1}) Δ_{t+1}
            s_k = torch.cat((s_k[:, :-1] + ((1 - lamk) * dtk)[:, 1:], s_k[:, -1:]), 1)
            if omk is not None:
                theta = torch.cumsum(omk[:, :, None, :] * dtk[..., None], 1)  # (b, L, heads, pairs)
                Bk, Ck = rotate_pairs(Bk, theta), rotate_pairs(Ck, theta)
            M = torch.einsum("bthn,bshn->bhts", Ck, Bk) / length  # every token against every other
            yk = yk + core.gain[:, None] * torch.einsum("bhts,bshp->bthp", M, xk * s_k[..., None])
        ys.append(yk[:, inv[k]])
    y = torch.stack(ys).mean(0) + core.D[:, None] * x
    y = core.out_norm(y.reshape(b, hh, ww, -1)) * F.silu(z)
    return core.out_proj(y), clamped


def make_core(seed: int = 0, **kwargs) -> HSSCore:
    """An HSSCore with non-trivial angle rates (at initialisation ω ≈ 0) and one head past the decay bound."""
    torch.manual_seed(seed)
    core = HSSCore(DIM, **{**SMALL, **kwargs})
    with torch.no_grad():
        if core.npairs:
            core.in_proj.weight[-core.npairs :].normal_()
        core.dt_bias[0] = 2.0  # Δ ≈ 2 with A ∈ [1, 16]: −Δ A > 3.5, so the clamp acts on this head
        core.D.normal_()
        core.B_bias.normal_()
        core.C_bias.normal_()
    return core


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# Each switch off on its own, all off, two other direction counts, two other curves and a non-square grid.
# Chunks of 4 tokens on 64 (or 60) tokens: 16 chunks > 4, so the SSD's recursive chunk-state pass runs.
CONFIGS = {
    "all_on": ({}, (8, 8)),
    "no_trapezoid": ({"trapezoid": False}, (8, 8)),
    "no_rotation": ({"rotation": False}, (8, 8)),
    "no_matrix_path": ({"matrix_path": False}, (8, 8)),
    "all_off": ({"trapezoid": False, "rotation": False, "matrix_path": False}, (8, 8)),
    "one_direction": ({"directions": (5,)}, (8, 8)),
    "eight_directions": ({"directions": tuple(range(8))}, (8, 8)),
    "snake": ({"scan_curve": "snake", "directions": (2, 7)}, (8, 8)),
    "raster": ({"scan_curve": "raster", "directions": (1, 4)}, (8, 8)),
    "non_square_auto_snake": ({"directions": (0, 3, 6)}, (6, 10)),
    "one_chunk_of_32": ({"chunk_size": 32}, (4, 8)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hss_fast_path_matches_step_reference(name):
    kwargs, grid = CONFIGS[name]
    core = make_core(seed=len(name), **kwargs).double()
    u = torch.randn(2, *grid, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, clamped = hss_step_reference(core, u)
        fast64 = core(u)
        fast32 = core.float()(u.float())
    assert clamped  # the decay bound is part of what is compared
    assert fast32.dtype == torch.float32
    err64, err32 = max_rel(fast64, ref), max_rel(fast32, ref)
    print(f"{name}: float64 {err64:.2e}, float32 {err32:.2e}")
    assert err64 < 1e-12, err64
    assert err32 < 5e-5, err32


def transplant(src: HSSCore, dst: HSSCore) -> None:
    """Copy ``src``'s parameters into ``dst``, built with some switches off.

    ``trapezoid=False`` and ``rotation=False`` drop rows of ``in_proj`` (the λ and ω projections) and
    ``matrix_path=False`` drops ``gain``: the shared rows and parameters are copied, the dropped ones ignored.
    """
    src_rows = torch.split(src.in_proj.weight.detach(), src.splits)
    rows = []
    for part, size, src_size in zip(src_rows, dst.splits, src.splits, strict=True):
        if size:
            assert size == src_size
            rows.append(part)
    state = {k: v for k, v in src.state_dict().items() if k in dst.state_dict()}
    state["in_proj.weight"] = torch.cat(rows)
    dst.load_state_dict(state, strict=True)


FLIPS = {
    "trapezoid": {"trapezoid": False},
    "rotation": {"rotation": False},
    "matrix_path": {"matrix_path": False},
    "directions_other": {"directions": (2, 3)},
    "directions_more": {"directions": (0, 1, 4, 5)},
    "directions_reversed_only": {"directions": (1,)},
    "scan_curve_snake": {"scan_curve": "snake"},
    "scan_curve_raster": {"scan_curve": "raster"},
}


@pytest.mark.parametrize("flip", list(FLIPS))
def test_each_switch_changes_the_output(flip):
    base = make_core(seed=7, directions=(0, 1))
    other = HSSCore(DIM, **{**SMALL, "directions": (0, 1), **FLIPS[flip]})
    # trapezoid / rotation / matrix_path change parameter shapes (in_proj rows, gain): transplant copies the shared
    # parameters and rows; directions and scan_curve keep every shape, so there it is a plain state-dict copy
    transplant(base, other)
    u = torch.randn(2, 8, 8, DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = max_rel(other(u), base(u))
    print(f"{flip}: {diff:.3f}")
    assert diff > 0.05, diff


@pytest.mark.parametrize("switch", ["rotation", "matrix_path"])
def test_switch_off_equals_its_neutral_setting(switch):
    """ω ≡ 0 (angle rows zero) is no rotation, and gain 0 is no matrix path: what the switch removes is only that.

    Guards :func:`transplant` too: the two modules differ only in the switched-off part.
    """
    base = make_core(seed=3).double()
    with torch.no_grad():
        if switch == "rotation":
            base.in_proj.weight[-base.npairs :].zero_()
        else:
            base.gain.zero_()
    off = HSSCore(DIM, **SMALL, **{switch: False}).double()
    transplant(base, off)
    u = torch.randn(2, 8, 8, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        err = max_rel(off(u), base(u))
    assert err < 1e-12, err
