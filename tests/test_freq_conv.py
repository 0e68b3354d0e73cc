# SPDX-License-Identifier: Apache-2.0
"""The real-arithmetic 2D DFT, the global frequency filter and the frequency-enhanced branch, incl. export."""

import time

import pytest
import torch
from helpers import export_and_compare

from anomalib_mambaadv2.components.freq_conv import (
    FrequencyEnhancedConv,
    GlobalFrequencyFilter,
    dft_bases,
    irfft2_real,
    reference_filter,
    rfft2_real,
)

GRIDS = [(8, 8), (7, 9), (16, 12), (5, 6), (1, 1), (3, 2)]


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# float64 runs the DFT bases in float64 (built from float64 tables), so it must match torch.fft to float64 rounding
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float64]


def randomize(layer: GlobalFrequencyFilter, seed: int = 1) -> None:
    with torch.no_grad():
        layer.weight_real.copy_(randn(*layer.weight_real.shape, seed=seed))
        layer.weight_imag.copy_(randn(*layer.weight_imag.shape, seed=seed + 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("h", "w"), GRIDS)
def test_rfft2_real_matches_torch(h, w, dtype):
    x = randn(2, 3, h, w, dtype=dtype)
    re, im = rfft2_real(x)
    ref = torch.fft.rfft2(x, norm="ortho")
    assert re.shape == im.shape == (2, 3, h, w // 2 + 1)
    assert re.dtype == im.dtype == dtype
    torch.testing.assert_close(re, ref.real, atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(im, ref.imag, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("h", "w"), GRIDS)
def test_irfft2_real_matches_torch(h, w, dtype):
    # Random half spectra, not Hermitian-consistent: the DC/Nyquist imaginary parts must be ignored like irfft2 does.
    re, im = randn(2, 3, h, w // 2 + 1, seed=1, dtype=dtype), randn(2, 3, h, w // 2 + 1, seed=2, dtype=dtype)
    out = irfft2_real(re, im, w)
    ref = torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")
    assert out.shape == (2, 3, h, w)
    torch.testing.assert_close(out, ref, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("h", "w"), GRIDS)
def test_round_trip_is_identity(h, w, dtype):
    x = randn(4, h, w, seed=3, dtype=dtype)
    torch.testing.assert_close(irfft2_real(*rfft2_real(x), w), x, atol=ATOL[dtype], rtol=0)


def test_dft_bases_cast_and_shapes():
    bases = dft_bases(7, 9, dtype=torch.float64)
    assert all(b.dtype == torch.float64 for b in bases)
    assert bases.w_cos.shape == bases.w_sin.shape == (9, 5)
    assert bases.h_cos.shape == bases.h_sin.shape == (7, 7)
    assert bases.inv_w_cos.shape == bases.inv_w_sin.shape == (5, 9)
    # Callers may modify what they get without corrupting the cache.
    bases.w_cos.zero_()
    assert dft_bases(7, 9, dtype=torch.float64).w_cos.abs().sum() > 0


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 9), (16, 12), (5, 6)])
def test_identity_filter_passes_input(h, w):
    layer = GlobalFrequencyFilter(3, (h, w))
    x = randn(2, 3, h, w, seed=4)
    torch.testing.assert_close(layer(x), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 9), (16, 12), (5, 6)])
def test_random_filter_matches_reference(h, w):
    layer = GlobalFrequencyFilter(3, (h, w))
    randomize(layer)
    x = randn(2, 3, h, w, seed=5)
    ref = reference_filter(x, layer.weight_real, layer.weight_imag)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=0)


def reference_filter_loops(x, weight_real, weight_imag):
    """The global filter from the DFT's definition, as explicit sums over the grid (float64; small grids only).

    ``X[k, l] = Σ_{m,n} x[m, n] e^{-2πi (km/h + ln/w)} / √(hw)`` on the full spectrum, the filter on the kept
    columns ``l <= w // 2`` and its complex conjugate on their Hermitian mirrors, then the inverse transform. The
    imaginary part of the filter on the DC (and, for even ``w``, Nyquist) column has no mirror and is dropped, as
    ``irfft2`` drops it.
    """
    h, w = x.shape[-2:]
    m, n = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    # phase[k, l, m, n] = km/h + ln/w
    phase = m[:, None, None, None] * m[None, None, :, None] / h + n[None, :, None, None] * n[None, None, None, :] / w
    basis = torch.exp(-2j * torch.pi * phase) / (h * w) ** 0.5  # (h, w, h, w) complex128
    spectrum = torch.einsum("klmn,bcmn->bckl", basis, x.to(torch.complex128))
    full = torch.empty(*weight_real.shape[:-1], w, dtype=torch.complex128)
    kept = torch.complex(weight_real, weight_imag).to(torch.complex128)
    for col in range(w):
        if col <= w // 2:
            full[..., col] = kept[..., col]
        else:  # column w - col mirrored, row k ↦ (h - k) mod h, conjugated
            full[..., col] = kept[:, (-torch.arange(h)) % h, w - col].conj()
    self_mirrored = [0] + ([w // 2] if w % 2 == 0 else [])
    for col in self_mirrored:  # a real signal's DC / Nyquist column is Hermitian in k: irfft2 keeps that part only
        col_k = full[..., col]
        full[..., col] = 0.5 * (col_k + col_k[:, (-torch.arange(h)) % h].conj())
    out = torch.einsum("klmn,bckl->bcmn", basis.conj(), spectrum * full)
    return out.real


@pytest.mark.parametrize(
    "native",
    [True, False],
)
@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 9), (6, 5)])
def test_filter_float64_matches_reference(h, w, native):
    """In float64 the module is the torch.fft filter to float64 rounding, on its own grid and on another one.

    On the native grid this checks that ``.double()`` rebuilds the bases buffers in float64 instead of upcasting
    float32-rounded tables (which gave about 3e-7).
    """
    layer = GlobalFrequencyFilter(3, (h, w) if native else (h + 2, w + 3)).double()
    with torch.no_grad():
        layer.weight_real.copy_(randn(*layer.weight_real.shape, seed=9, dtype=torch.float64))
        layer.weight_imag.copy_(randn(*layer.weight_imag.shape, seed=10, dtype=torch.float64))
    x = randn(2, 3, h, w, seed=11, dtype=torch.float64)
    w_re, w_im = layer._weights_for(h, w)  # the resampled filter on another grid
    out = layer(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_filter(x, w_re, w_im), atol=1e-12, rtol=0)
    torch.testing.assert_close(out, reference_filter_loops(x, w_re.detach(), w_im.detach()), atol=1e-12, rtol=0)


def test_filter_resamples_to_other_grid():
    layer = GlobalFrequencyFilter(4, (16, 16))
    x = randn(2, 4, 32, 32, seed=6)
    torch.testing.assert_close(layer(x), x, atol=1e-5, rtol=0)  # identity weights stay identity once resampled
    randomize(layer)
    out = layer(torch.randn(2, 4, 20, 13))
    assert out.shape == (2, 4, 20, 13)
    assert torch.isfinite(out).all()


def test_filter_rejects_wrong_channels():
    with pytest.raises(ValueError, match="expected input"):
        GlobalFrequencyFilter(4, (8, 8))(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("hidden", [None, 12])
def test_branch_shape_and_gradients(hidden):
    branch = FrequencyEnhancedConv(8, (16, 16), hidden=hidden)
    randomize(branch.filter)
    x = randn(2, 8, 16, 16, seed=7)
    out = branch(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, param in branch.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_branch_exports_to_onnx_and_openvino(tmp_path):
    torch.manual_seed(0)
    branch = FrequencyEnhancedConv(8, (16, 16))
    randomize(branch.filter)
    start = time.perf_counter()
    diffs = export_and_compare(branch, (randn(2, 8, 16, 16, seed=8),), tmp_path, atol=1e-4)
    print(f"export diffs {diffs} in {time.perf_counter() - start:.1f} s")
