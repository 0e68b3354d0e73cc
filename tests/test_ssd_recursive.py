# SPDX-License-Identifier: Apache-2.0
"""The recursive chunk-state pass (sequences of many chunks, as at 256 px), trapezoid and rotation on, in float64."""

import math

import pytest
import torch

from anomalib_mambaadv2.components.ssd_reference import ssd, ssd_reference


def long_inputs(L, decay, dtype=torch.float64, seed=0, b=1, h=2, p=3, n=8, s=2):
    """Random inputs (no zeros) with the per-token log-decay ``−Δ_t A_t`` drawn from regime ``decay``."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def u(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    dt = torch.nn.functional.softplus(r(b, L, h) - 1.0)
    log_decay = {
        "near_zero": lambda: 1e-7 * (0.5 + u(b, L, h)),  # the state keeps (almost) everything over 4096 tokens
        "moderate": lambda: u(b, L, h),
        "strong": lambda: 2.0 + 1.5 * u(b, L, h),  # up to HSS's bound MAX_LOG_DECAY = 3.5
        "very_strong": lambda: 20.0 + 40.0 * u(b, L, h),  # a 32-token chunk spans > 1200: segment sums
        "resets": lambda: 1e-7 * (0.5 + u(b, L, h)) + 30.0 * (u(b, L, h) < 0.01),  # near zero, ~1 % state resets
        "huge": lambda: 700.0 + 100.0 * u(b, L, h),  # even 2 tokens span > 1200 in float64: segment sums
    }[decay]()
    return {
        "x": r(b, L, h, p),
        "dt": dt,
        "A": -log_decay / dt,
        "B": r(b, L, 1, n),
        "C": r(b, L, 1, n),
        "D": r(h),
        "lam": torch.sigmoid(r(b, L, h)),
        "omega": math.pi * torch.tanh(r(b, L, h, s)),
    }


def spy_on_scan(monkeypatch):
    """Count the levels of ``_chunked_scan`` (it recurses on the chunk states) and how many take segment sums."""
    from anomalib_mambaadv2.components import ssd as ssd_module

    seen = {"levels": 0, "segsum_levels": 0}
    real_scan, real_segsum = ssd_module._chunked_scan, ssd_module._segsum_st

    def scan(*args, **kwargs):
        seen["levels"] += 1
        return real_scan(*args, **kwargs)

    def segsum_st(a, exclusive):
        seen["segsum_levels"] += not exclusive  # the within-chunk segment-sum form (not the chunk-state matrix)
        return real_segsum(a, exclusive)

    monkeypatch.setattr(ssd_module, "_chunked_scan", scan)
    monkeypatch.setattr(ssd_module, "_segsum_st", segsum_st)
    return seen


# (L, chunk, levels of _chunked_scan): 4096 = 128 chunks of 32, then 4 chunks of chunk states; 1000 tokens in chunks
# of 4 recurse 1000 → 250 → 63 (padded) → 16 chunk states, with padding at two levels.
LONG = [(4096, 32, 2), (1000, 4, 4)]
DECAYS = ["near_zero", "moderate", "strong", "very_strong", "resets"]


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize(("L", "chunk", "levels"), LONG)
def test_recursive_chunk_states_match_reference(monkeypatch, L, chunk, levels, decay):
    inp = long_inputs(L, decay, seed=L + DECAYS.index(decay))
    ref = ssd_reference(**inp)
    scale = ref.abs().max()
    seen = spy_on_scan(monkeypatch)
    out = ssd(**inp, chunk_size=chunk)
    assert seen["levels"] == levels  # the recursive chunk-state pass ran, as deep as claimed
    if decay == "near_zero":
        assert seen["segsum_levels"] == 0  # factorised at every level
    if decay == "very_strong":
        assert seen["segsum_levels"] >= 1  # the segment-sum fallback runs (in chunks of 32 at every level)
    err64 = float((out - ref).abs().max() / scale)
    out32 = ssd(**{k: v.float() for k, v in inp.items()}, chunk_size=chunk)
    err32 = float((out32.double() - ref).abs().max() / scale)
    print(f"L={L} chunk={chunk} {decay}: float64 {err64:.1e}, float32 {err32:.1e} (relative to max|y| {scale:.3g})")
    assert err64 < 1e-12, err64
    assert err32 < 5e-5, err32


@pytest.mark.parametrize(
    ("L", "chunk", "levels", "decay", "fast_mode"),
    [
        (12, 2, 3, "moderate", False),
        (12, 2, 3, "very_strong", True),  # factorised form with e^{±60} factors
        (12, 2, 3, "huge", True),  # segment-sum form at every level (no other gradcheck reaches it)
        (20, 3, 2, "strong", True),
    ],
)
def test_gradcheck_through_recursive_chunk_states(monkeypatch, L, chunk, levels, decay, fast_mode):
    """Gradients through several chunk states, trapezoid and rotation on.

    12 tokens in chunks of 2 recurse 12 → 6 → 3 (padded) chunk states; 20 tokens in chunks of 3 give 7 chunk states.
    One full Jacobian check on a single head; the others compare random projections of it (``fast_mode``), which is
    what keeps them fast on two cores.
    """
    inp = long_inputs(L, decay, seed=L, h=1 if not fast_mode else 2, p=2, n=4 if fast_mode else 2, s=1)
    names = list(inp)
    seen = spy_on_scan(monkeypatch)

    def fn(*tensors):
        return ssd(**dict(zip(names, tensors, strict=True)), chunk_size=chunk)

    tensors = [inp[k].clone().requires_grad_(True) for k in names]
    fn(*tensors)
    assert seen["levels"] == levels
    assert (seen["segsum_levels"] == levels) == (decay == "huge")
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, fast_mode=fast_mode)
