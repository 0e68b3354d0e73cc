# SPDX-License-Identifier: Apache-2.0
"""Frequency-enhanced convolution branch with an exportable, real-arithmetic 2D FFT.

The branch applies a GFNet-style learnable global filter: a per-channel complex weight multiplied with the 2D real
spectrum of the feature map. ``torch.fft`` exports to ONNX but OpenVINO's converter rejects the resulting DFT ops, and
complex tensors are poorly supported by exporters in general, so the real DFT is written here as matrix products with
fixed cos/sin bases. With ``norm="ortho"`` scaling folded into the bases this reproduces
``torch.fft.rfft2`` / ``torch.fft.irfft2`` to float32 rounding, and exports as plain ``MatMul`` nodes.

Public API:
    * :func:`dft_bases` — cos/sin matrices of the forward and inverse 2D real DFT for one grid size (cached).
    * :func:`rfft2_real` / :func:`irfft2_real` — ``rfft2`` / ``irfft2`` (ortho) on real ``(re, im)`` pairs.
    * :class:`GlobalFrequencyFilter` — learnable per-channel complex filter on the 2D real spectrum.
    * :class:`FrequencyEnhancedConv` — the branch: 1×1 conv → global filter → 1×1 conv, with norms and SiLU.
    * :func:`reference_filter` — the same filter written with ``torch.fft``, for tests only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv_norm_act import conv_norm_act

__all__ = [
    "DFTBases",
    "FrequencyEnhancedConv",
    "GlobalFrequencyFilter",
    "dft_bases",
    "irfft2_real",
    "reference_filter",
    "rfft2_real",
]


# --------------------------------------------------------------------------------------------------------------------
# Real 2D DFT as matrix products
# --------------------------------------------------------------------------------------------------------------------
class DFTBases(NamedTuple):
    """Real bases of the orthonormal 2D real DFT on an ``h × w`` grid (``wf = w // 2 + 1`` kept frequencies).

    Attributes:
        w_cos: ``(w, wf)`` forward basis along W, real part: ``cos(2π n l / w) / √w``.
        w_sin: ``(w, wf)`` forward basis along W, imaginary part: ``-sin(2π n l / w) / √w``.
        h_cos: ``(h, h)`` symmetric basis along H: ``cos(2π k m / h) / √h`` (used by both directions).
        h_sin: ``(h, h)`` symmetric basis along H: ``sin(2π k m / h) / √h`` (used by both directions).
        inv_w_cos: ``(wf, w)`` inverse basis along W for the real part: ``c_l cos(2π l n / w) / √w``.
        inv_w_sin: ``(wf, w)`` inverse basis along W for the imaginary part: ``-c_l sin(2π l n / w) / √w``.

    ``c_l`` is 1 for the DC column, 1 for the Nyquist column when ``w`` is even, and 2 otherwise: each kept column
    stands for itself and its Hermitian mirror. ``sin`` vanishes on the DC and Nyquist columns, so their imaginary
    parts are ignored, exactly as ``torch.fft.irfft2`` does.
    """

    w_cos: Tensor
    w_sin: Tensor
    h_cos: Tensor
    h_sin: Tensor
    inv_w_cos: Tensor
    inv_w_sin: Tensor


def _cos_sin(rows: int, cols: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` / ``sin`` of ``2π r c / n`` for ``r < rows``, ``c < cols``, in float64.

    The product ``r c`` is reduced modulo ``n`` in integers first, so the angle stays in ``[0, 2π)`` and the table is
    accurate for any grid size.
    """
    phase = np.outer(np.arange(rows, dtype=np.int64), np.arange(cols, dtype=np.int64)) % n
    angle = (2.0 * math.pi / n) * phase.astype(np.float64)
    return np.cos(angle), np.sin(angle)


@functools.lru_cache(maxsize=32)
def _dft_bases_f64(h: int, w: int) -> tuple[np.ndarray, ...]:
    """The :class:`DFTBases` matrices in float64 NumPy arrays.

    Cached as NumPy rather than torch tensors: a first call made while ``torch.export`` traces a forward would
    otherwise create (and cache for good) fake tensors.
    """
    wf = w // 2 + 1
    scale_w, scale_h = 1.0 / math.sqrt(w), 1.0 / math.sqrt(h)
    cos_w, sin_w = _cos_sin(w, wf, w)  # (w, wf)
    cos_h, sin_h = _cos_sin(h, h, h)  # (h, h)
    weight = np.full(wf, 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0  # the Nyquist column has no mirror
    inv_cos = weight[:, None] * cos_w.T  # (wf, w)
    inv_sin = -weight[:, None] * sin_w.T
    arrays = (cos_w * scale_w, -sin_w * scale_w, cos_h * scale_h, sin_h * scale_h, inv_cos * scale_w, inv_sin * scale_w)
    for array in arrays:
        array.flags.writeable = False  # shared through the cache
    return arrays


def dft_bases(h: int, w: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> DFTBases:
    """Cos/sin bases of ``rfft2`` / ``irfft2`` with ``norm="ortho"`` on an ``h × w`` grid.

    Built once per ``(h, w)`` in float64 on the CPU, then cast to ``dtype`` and moved to ``device``.

    Args:
        h: Grid height.
        w: Grid width (the last, halved axis).
        dtype: Floating-point dtype of the returned matrices.
        device: Device of the returned matrices (CPU when ``None``).

    Returns:
        The six matrices described in :class:`DFTBases`.
    """
    if h < 1 or w < 1:
        msg = f"the grid size must be positive, got h={h}, w={w}."
        raise ValueError(msg)
    # ``torch.tensor`` copies, so callers never alias (and could never corrupt) the cached arrays.
    return DFTBases(*(torch.tensor(a, dtype=dtype, device=device) for a in _dft_bases_f64(h, w)))


def _bases_for(x: Tensor, h: int, w: int, bases: DFTBases | None) -> DFTBases:
    """``bases`` cast to ``x``'s dtype and device, or fresh bases for ``h × w`` when none are given."""
    if bases is None:
        return dft_bases(h, w, dtype=x.dtype, device=x.device)
    return DFTBases(*(b.to(dtype=x.dtype, device=x.device) for b in bases))


def rfft2_real(x: Tensor, bases: DFTBases | None = None) -> tuple[Tensor, Tensor]:
    """``torch.fft.rfft2(x, norm="ortho")`` over the last two axes, as real and imaginary parts.

    Args:
        x: Real tensor ``(..., h, w)``.
        bases: Precomputed :func:`dft_bases` for ``(h, w)``; built (cached) when ``None``.

    Returns:
        ``(re, im)``, each ``(..., h, w // 2 + 1)``.
    """
    h, w = x.shape[-2], x.shape[-1]
    b = _bases_for(x, h, w, bases)
    # Half spectrum along W: (..., h, w) @ (w, wf).
    y_re, y_im = x @ b.w_cos, x @ b.w_sin
    # Full DFT along H: (cos - i sin) (y_re + i y_im), applied from the left.
    re = b.h_cos @ y_re + b.h_sin @ y_im
    im = b.h_cos @ y_im - b.h_sin @ y_re
    return re, im


def irfft2_real(re: Tensor, im: Tensor, w: int, bases: DFTBases | None = None) -> Tensor:
    """``torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")`` in real arithmetic.

    Args:
        re: Real part of the half spectrum ``(..., h, w // 2 + 1)``.
        im: Imaginary part, same shape. Its DC and (for even ``w``) Nyquist columns are ignored, as in ``irfft2``.
        w: Width of the output grid (``w // 2 + 1`` must match the last axis of ``re``; needed to tell odd from even).
        bases: Precomputed :func:`dft_bases` for ``(h, w)``; built (cached) when ``None``.

    Returns:
        The real signal ``(..., h, w)``.
    """
    h = re.shape[-2]
    if re.shape[-1] != w // 2 + 1:
        msg = f"a width-{w} grid needs {w // 2 + 1} frequency columns, got `re` of shape {tuple(re.shape)}."
        raise ValueError(msg)
    b = _bases_for(re, h, w, bases)
    # Inverse full DFT along H: (cos + i sin) (re + i im).
    z_re = b.h_cos @ re - b.h_sin @ im
    z_im = b.h_cos @ im + b.h_sin @ re
    # Hermitian-weighted inverse along W: (..., h, wf) @ (wf, w).
    return z_re @ b.inv_w_cos + z_im @ b.inv_w_sin


def reference_filter(x: Tensor, weight_real: Tensor, weight_imag: Tensor) -> Tensor:
    """The global filter written with ``torch.fft`` (complex tensors; not exportable), for tests only.

    Args:
        x: Input ``(B, C, h, w)`` on the grid the weights were made for.
        weight_real: Real part of the filter ``(C, h, w // 2 + 1)``.
        weight_imag: Imaginary part of the filter, same shape.

    Returns:
        ``irfft2(rfft2(x) * (weight_real + i weight_imag))`` with ``norm="ortho"``, shape ``(B, C, h, w)``.
    """
    spectrum = torch.fft.rfft2(x, norm="ortho") * torch.complex(weight_real, weight_imag)
    return torch.fft.irfft2(spectrum, s=x.shape[-2:], norm="ortho")


# --------------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------------
class GlobalFrequencyFilter(nn.Module):
    """Learnable per-channel complex filter on the 2D real spectrum (GFNet), in real arithmetic only.

    ``forward(x) = irfft2(rfft2(x) ⊙ W)`` with ``norm="ortho"`` and ``W = weight_real + i weight_imag`` of shape
    ``(C, h, w // 2 + 1)``, initialised to 1 (identity). An input on another grid than ``grid_size`` gets the filter
    resampled bilinearly (real and imaginary parts separately), so the module runs at any resolution.

    Args:
        channels: Number of channels ``C``.
        grid_size: ``(h, w)`` spatial size the filter weights are made for.

    Example:
        >>> layer = GlobalFrequencyFilter(8, (16, 16))
        >>> layer(torch.randn(2, 8, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(self, channels: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = (int(s) for s in grid_size)
        self.channels = channels
        self.grid_size = (h, w)
        self.weight_real = nn.Parameter(torch.ones(channels, h, w // 2 + 1))
        self.weight_imag = nn.Parameter(torch.zeros(channels, h, w // 2 + 1))
        # Bases of the native grid as buffers: they follow ``.to(device)`` and become graph constants on export.
        # Not persistent: they are a pure function of ``grid_size``, so checkpoints need not carry them.
        for name, basis in dft_bases(h, w)._asdict().items():
            self.register_buffer(f"_basis_{name}", basis, persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> GlobalFrequencyFilter:
        """Cast as ``nn.Module`` does, but give float64 modules exact bases (a cast keeps float32's rounding)."""
        super()._apply(fn, recurse)
        first = getattr(self, f"_basis_{DFTBases._fields[0]}")
        if first.dtype == torch.float64:
            for name, basis in dft_bases(*self.grid_size, torch.float64, first.device)._asdict().items():
                setattr(self, f"_basis_{name}", basis)
        return self

    def _native_bases(self) -> DFTBases:
        return DFTBases(*(getattr(self, f"_basis_{name}") for name in DFTBases._fields))

    def _weights_for(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Filter ``(re, im)`` on an ``h × (w // 2 + 1)`` spectrum, resampled when the grid is not the native one."""
        if (h, w) == self.grid_size:
            return self.weight_real, self.weight_imag
        # Real and imaginary parts as two batch items: each is interpolated on its own, per channel.
        stacked = torch.stack((self.weight_real, self.weight_imag))  # (2, C, h0, wf0)
        resampled = F.interpolate(stacked, size=(h, w // 2 + 1), mode="bilinear", align_corners=False)
        return resampled[0], resampled[1]

    def forward(self, x: Tensor) -> Tensor:
        """Filter ``x`` ``(B, C, H, W)`` in the frequency domain; returns the same shape."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            msg = f"expected input (batch, {self.channels}, height, width), got {tuple(x.shape)}."
            raise ValueError(msg)
        h, w = x.shape[-2], x.shape[-1]
        bases = self._native_bases() if (h, w) == self.grid_size else None
        re, im = rfft2_real(x, bases)
        w_re, w_im = self._weights_for(h, w)
        w_re, w_im = w_re.to(x.dtype), w_im.to(x.dtype)
        # (re + i im)(w_re + i w_im), broadcast over the batch.
        return irfft2_real(re * w_re - im * w_im, re * w_im + im * w_re, w, bases)

    def extra_repr(self) -> str:
        """Channels and native grid, shown in the module's repr."""
        return f"channels={self.channels}, grid_size={self.grid_size}"


class FrequencyEnhancedConv(nn.Module):
    """Frequency-enhanced convolution branch: a global spectral filter between two pointwise convolutions.

    ``1×1 conv → InstanceNorm → SiLU → GlobalFrequencyFilter → InstanceNorm → SiLU → 1×1 conv → InstanceNorm → SiLU``.
    The convolutions carry no bias since an instance norm follows each of them.

    Args:
        channels: Input and output channels.
        grid_size: ``(h, w)`` spatial size the filter weights are made for (other sizes are resampled).
        hidden: Channels of the filtered representation; ``channels`` when ``None``.

    Example:
        >>> branch = FrequencyEnhancedConv(8, (16, 16), hidden=16)
        >>> branch(torch.randn(2, 8, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(self, channels: int, grid_size: tuple[int, int], hidden: int | None = None) -> None:
        super().__init__()
        hidden = channels if hidden is None else hidden
        norm = functools.partial(nn.InstanceNorm2d, affine=True)
        self.project_in = nn.Sequential(*conv_norm_act(channels, hidden, norm=norm))
        self.filter = GlobalFrequencyFilter(hidden, grid_size)
        self.filter_norm = nn.Sequential(norm(hidden), nn.SiLU())
        self.project_out = nn.Sequential(*conv_norm_act(hidden, channels, norm=norm))
        self.register_load_state_dict_pre_hook(rename_legacy_frequency_keys)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x`` ``(B, C, H, W)`` to the same shape."""
        return self.project_out(self.filter_norm(self.filter(self.project_in(x))))


# Names of the branch's parameters before 2026-12-05 (before it was built from conv_norm_act) and now.
_LEGACY_NAMES = {
    "proj_in.": "project_in.0.",
    "norm_in.": "project_in.1.",
    "norm_filter.": "filter_norm.0.",
    "proj_out.": "project_out.0.",
    "norm_out.": "project_out.1.",
}


def rename_legacy_frequency_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: a frequency branch's keys saved before 2026-12-05 load under today's names."""
    for old, new in _LEGACY_NAMES.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key.removeprefix(prefix + old)] = state_dict.pop(key)
