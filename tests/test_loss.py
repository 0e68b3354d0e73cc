# SPDX-License-Identifier: Apache-2.0
"""The reconstruction losses, against plain definitions (the hard-mined one against a backward-hook reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomalib_mambaadv2.loss import ReconstructionLoss, shrink_easy_gradients


def hooked_reference(enc, dec, p, factor):
    """Dinomaly-style: global cosine per image and scale; a backward hook scales the easy positions' gradients."""
    total = 0
    for e, d in zip(enc, dec, strict=True):
        point = (1 - F.cosine_similarity(e, d, dim=1)).detach()  # (B, H, W)
        ordered = point.flatten().sort(descending=True).values
        threshold = ordered[max(1, int(point.numel() * (1 - p))) - 1]
        easy = (point < threshold).unsqueeze(1).expand_as(d)
        d.register_hook(lambda g, easy=easy: torch.where(easy, g * factor, g))
        total = total + (1 - F.cosine_similarity(e.reshape(len(e), -1), d.reshape(len(d), -1), dim=1)).mean()
    return total / len(enc)


def features(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 5, 8, 8), (3, 7, 4, 4), (3, 9, 2, 2)]
    enc = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    dec = [(e + 0.7 * torch.randn(e.shape, generator=g, dtype=dtype)) for e in enc]
    return enc, dec


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("p", "factor"), [(0.9, 0.1), (0.5, 0.0), (0.0, 0.1)])
def test_hard_mined_loss_matches_hook_reference(dtype, p, factor):
    enc, dec = features(dtype)
    mine = [d.clone().requires_grad_() for d in dec]
    ref = [d.clone().requires_grad_() for d in dec]
    loss = ReconstructionLoss("cosine_hm", hm_p=p, hm_factor=factor, hm_ramp=0)(enc, mine)
    expected = hooked_reference(enc, [r * 1 for r in ref], p, factor)  # hook on a non-leaf, as in training
    loss.backward()
    expected.backward()
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(loss, expected, **tol)
    for m, r in zip(mine, ref, strict=True):
        torch.testing.assert_close(m.grad, r.grad, **tol)


def test_hard_mining_shrinks_exactly_the_easy_positions():
    enc, dec = features(torch.float64, seed=1)
    e, d = enc[0], dec[0]
    full = d.clone().requires_grad_()
    ReconstructionLoss("cosine_hm", hm_p=0.0, hm_ramp=0)([e], [full]).backward()  # p = 0: plain global cosine
    mined = d.clone().requires_grad_()
    ReconstructionLoss("cosine_hm", hm_p=0.75, hm_factor=0.1, hm_ramp=0)([e], [mined]).backward()
    point = 1 - F.cosine_similarity(e, d, dim=1)
    hard = point >= point.flatten().sort(descending=True).values[int(point.numel() * 0.25) - 1]
    assert hard.sum() == point.numel() // 4
    ratio = (mined.grad / full.grad).permute(1, 0, 2, 3)  # (C, B, H, W)
    torch.testing.assert_close(ratio[:, hard], torch.ones_like(ratio[:, hard]))
    torch.testing.assert_close(ratio[:, ~hard], torch.full_like(ratio[:, ~hard], 0.1))


def test_shrink_easy_gradients_keeps_values():
    d = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    easy = torch.rand(2, 1, 4, 4) < 0.5
    out = shrink_easy_gradients(d, easy, 0.25)
    torch.testing.assert_close(out, d, rtol=0, atol=0)
    out.sum().backward()
    torch.testing.assert_close(d.grad, torch.where(easy, 0.25, 1.0).to(d.dtype).expand_as(d))


def test_hard_fraction_ramps_to_p():
    loss = ReconstructionLoss("cosine_hm", hm_p=0.9, hm_ramp=0.1)
    assert [loss.hard_fraction(t) for t in (0.0, 0.05, 0.1, 0.5, 1.0)] == pytest.approx([0, 0.45, 0.9, 0.9, 0.9])
    enc, dec = features(torch.float64, seed=2)
    at_start, plain = [d.clone().requires_grad_() for d in dec], [d.clone().requires_grad_() for d in dec]
    loss(enc, at_start, progress=0.0).backward()  # p = 0 at the start: every position keeps its gradient
    ReconstructionLoss("cosine_hm", hm_p=0.0)(enc, plain).backward()
    for a, b in zip(at_start, plain, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_bad_loss_options_are_named():
    with pytest.raises(ValueError, match="cosine_hm"):
        ReconstructionLoss("l1")
    with pytest.raises(ValueError, match="hm_p"):
        ReconstructionLoss("cosine_hm", hm_p=1.0)
