# SPDX-License-Identifier: Apache-2.0
"""Defects of the embedded dataset, drawn onto normal images with exact masks.

* ``scratch``: a thin, tapered, curved dark or bright line (anti-aliased Bézier curve),
* ``hole``: a dark pit with a soft edge, darker towards its centre,
* ``foreign``: a patch of another category's texture pasted inside an irregular blob,
* ``stain``: a smooth colour / brightness change inside a smooth-noise-shaped blob.

Ground-truth masks are exact: a mask pixel is set if and only if the defect changed that pixel (changes of at most
``CHANGE_EPS`` grey levels are reverted to the clean value, so ``mask == (defective != clean).any(-1)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .textures import CATEGORIES, _check_category, _normal_from_rng, _rng, _texture_crop, _to_uint8

DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "foreign", "stain")
CHANGE_EPS = 2
"""Per-channel changes of at most this many grey levels are reverted to the clean value (and left out of the mask)."""

_MIN_AREA, _MAX_AREA = 0.005, 0.08  # accepted defect area, fraction of the image
_MIN_MEAN_CHANGE = 20.0  # accepted mean |change| inside the mask, grey levels (channel mean) ...
_MIN_REL_CHANGE = 0.6  # ... and at least this fraction of the clean image's grey-level standard deviation
_MAX_TRIES = 200


@dataclass(frozen=True)
class DefectSample:
    """One defective test image with its clean counterpart.

    Attributes:
        clean: The normal image the defect was drawn on, ``(H, W, 3)`` uint8.
        image: The defective image, ``(H, W, 3)`` uint8 (written to ``test/<defect_type>/``).
        mask: Boolean ``(H, W)`` ground truth; exactly the pixels where ``image`` differs from ``clean``.
        defect_type: One of :data:`DEFECT_TYPES`.
    """

    clean: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    defect_type: str


# ----------------------------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _blob(rng: np.random.Generator, size: int, area: float, roughness: float = 0.6) -> np.ndarray:
    """An irregular, hole-free blob covering about ``area`` of the image (boolean ``(size, size)``).

    A radial bump around a random centre plus smooth noise, thresholded at the quantile that gives the wanted area;
    the largest connected component is kept and its holes are filled.
    """
    radius = np.sqrt(area * size * size / np.pi)
    cy, cx = rng.uniform(0.15, 0.85, size=2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Mildly elliptical bump with a random orientation.
    theta, aspect = rng.uniform(0, np.pi), rng.uniform(0.6, 1.0)
    u = ((yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)) / radius
    v = (-(yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)) / radius
    field = 1.0 - (u * aspect) ** 2 - (v / aspect) ** 2
    field += roughness * _smooth_noise(rng, size, sigma=max(radius / 3.0, 1.0))
    blob = field > np.quantile(field, 1.0 - area)
    labels, n = ndimage.label(blob)
    if n > 1:
        blob = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return ndimage.binary_fill_holes(blob)


def _soft(blob: np.ndarray, sigma: float) -> np.ndarray:
    """Soft-edged alpha in [0, 1] from a boolean shape."""
    return np.clip(ndimage.gaussian_filter(blob.astype(np.float32), sigma), 0.0, 1.0)


def _curve_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """Anti-aliased coverage of a thin, tapered, curved line (cubic Bézier), in [0, 1]."""
    scale = size / 256.0
    length = rng.uniform(0.35, 0.8) * size
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    centre = rng.uniform(0.25, 0.75, size=2) * size
    p0, p3 = centre - direction * length / 2, centre + direction * length / 2
    p1 = p0 + direction * length / 3 + normal * rng.uniform(-0.35, 0.35) * length
    p2 = p0 + 2 * direction * length / 3 + normal * rng.uniform(-0.35, 0.35) * length
    t = np.linspace(0.0, 1.0, 48)[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3  # (n, 2) as (y, x)
    half_width = max(0.6, rng.uniform(1.2, 2.6) * scale)

    pad = int(np.ceil(half_width)) + 2
    y0, x0 = np.maximum(np.floor(pts.min(0)).astype(int) - pad, 0)
    y1, x1 = np.minimum(np.ceil(pts.max(0)).astype(int) + pad + 1, size)
    alpha = np.zeros((size, size), np.float32)
    if y1 <= y0 or x1 <= x0:
        return alpha
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    best = np.full(yy.shape, np.inf)
    best_t = np.zeros(yy.shape)
    n_seg = len(pts) - 1
    for i in range(n_seg):
        a, b = pts[i], pts[i + 1]
        ab = b - a
        denom = max(float(ab @ ab), 1e-9)
        s = np.clip(((yy - a[0]) * ab[0] + (xx - a[1]) * ab[1]) / denom, 0.0, 1.0)
        d = np.hypot(yy - (a[0] + s * ab[0]), xx - (a[1] + s * ab[1]))
        closer = d < best
        best = np.where(closer, d, best)
        best_t = np.where(closer, (i + s) / n_seg, best_t)
    # Taper towards both ends, and let the depth of the scratch vary smoothly along its length.
    taper = np.sin(np.pi * best_t) ** 0.35
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 3.0)
    depth = 0.8 + 0.2 * np.sin(2 * np.pi * freq * best_t + phase)
    cover = np.clip(half_width * taper + 0.5 - best, 0.0, 1.0)
    alpha[y0:y1, x0:x1] = cover * depth
    return alpha


# ----------------------------------------------------------------------------------------------------------------------
# Defects: each returns (alpha, target); the defective image is clean·(1 − alpha) + target·alpha
# ----------------------------------------------------------------------------------------------------------------------


def _scratch(rng: np.random.Generator, clean: np.ndarray, _category: str) -> tuple[np.ndarray, np.ndarray]:
    alpha = _curve_alpha(rng, clean.shape[0])
    if rng.random() < 0.5:  # dark groove
        target = clean * rng.uniform(0.1, 0.25) + rng.uniform(0.0, 8.0)
    else:  # bright scrape exposing lighter material
        level = rng.uniform(215.0, 250.0)
        target = 0.2 * clean + 0.8 * level
    return alpha, target


def _hole(rng: np.random.Generator, clean: np.ndarray, _category: str) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    scale = size / 256.0
    blob = _blob(rng, size, _log_uniform(rng, 0.006, 0.035), roughness=0.35)
    alpha = _soft(blob, max(0.7, rng.uniform(1.0, 2.0) * scale))
    # Deeper (darker) towards the centre; some of the texture still shows through.
    depth = ndimage.distance_transform_edt(blob)
    depth = np.sqrt(depth / max(float(depth.max()), 1e-6))[..., None]
    factor = 0.45 - 0.3 * depth
    target = clean * factor + rng.uniform(3.0, 12.0)
    return alpha, target


def _foreign(rng: np.random.Generator, clean: np.ndarray, category: str) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    scale = size / 256.0
    others = [c for c in CATEGORIES if c != category]
    other = others[int(rng.integers(len(others)))]
    patch = _texture_crop(rng, other, size, scale=(0.2, 0.6)) * rng.uniform(0.85, 1.2)
    blob = _blob(rng, size, _log_uniform(rng, 0.01, 0.06), roughness=0.8)
    alpha = _soft(blob, max(0.5, rng.uniform(0.6, 1.3) * scale))
    return alpha, patch


_STAIN_GAINS = (
    (0.7, 0.52, 0.36),  # brown (rust / dirt)
    (1.08, 0.92, 0.5),  # yellowish
    (0.5, 0.5, 0.52),  # dark, wet-looking
    (0.72, 0.88, 1.2),  # bluish-grey chemical
)


def _stain(rng: np.random.Generator, clean: np.ndarray, _category: str) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    scale = size / 256.0
    blob = _blob(rng, size, _log_uniform(rng, 0.012, 0.06), roughness=0.5)
    alpha = _soft(blob, max(0.8, rng.uniform(1.5, 3.0) * scale))
    # Uneven strength inside the blob (darker patches / rings) from smooth noise.
    inner = _smooth_noise(rng, size, sigma=max(2.0, 6.0 * scale))
    alpha = alpha * np.clip(0.85 + 0.15 * inner, 0.5, 1.0) * rng.uniform(0.85, 1.0)
    # A stain evens out the texture a little (soaked-in material) besides changing its colour.
    flat = 0.7 * clean + 0.3 * clean.mean(axis=(0, 1), keepdims=True)
    if rng.random() < 0.2:  # bleached (lighter) stain
        target = 0.45 * flat + 0.55 * rng.uniform(205.0, 240.0)
    else:
        gain = np.asarray(_STAIN_GAINS[int(rng.integers(len(_STAIN_GAINS)))], dtype=np.float32)
        target = flat * gain * rng.uniform(0.9, 1.05)
    return alpha, target


_DEFECTS = {"scratch": _scratch, "hole": _hole, "foreign": _foreign, "stain": _stain}


def _draw_defect(
    rng: np.random.Generator, clean: np.ndarray, category: str, defect_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one visible defect of the wanted size; returns (defective uint8, mask bool), mask == changed pixels."""
    clean_f = clean.astype(np.float32)
    n_px = clean.shape[0] * clean.shape[1]
    min_change = max(_MIN_MEAN_CHANGE, _MIN_REL_CHANGE * float(clean_f.mean(-1).std()))
    for _ in range(_MAX_TRIES):
        alpha, target = _DEFECTS[defect_type](rng, clean_f, category)
        alpha = alpha[..., None] if alpha.ndim == 2 else alpha
        defective = _to_uint8(clean_f * (1.0 - alpha) + target * alpha)
        change = np.abs(defective.astype(np.int16) - clean.astype(np.int16))
        mask = change.max(-1) > CHANGE_EPS
        defective[~mask] = clean[~mask]  # revert invisible changes so the mask is exactly the changed pixels
        area = mask.sum() / n_px
        if _MIN_AREA <= area <= _MAX_AREA and change[mask].mean() >= min_change:
            return defective, mask
    msg = f"could not draw a visible {defect_type!r} defect on {category!r} in {_MAX_TRIES} tries"  # pragma: no cover
    raise RuntimeError(msg)  # pragma: no cover


def _defect_type_of(index: int) -> str:
    return DEFECT_TYPES[index % len(DEFECT_TYPES)]


def render_defect_sample(
    category: str, index: int, image_size: int = 256, seed: int = 0, defect_type: str | None = None
) -> DefectSample:
    """Regenerate defective test image ``index`` of ``category`` with its clean counterpart and exact mask.

    Defective test images are numbered globally per category; image ``index`` has defect type
    ``DEFECT_TYPES[index % 4]`` and is written as ``test/<defect_type>/{index // 4:03d}.png``.

    Args:
        category: One of :data:`CATEGORIES`.
        index: Global index of the defective test image (``0 … n_test_defect − 1``).
        image_size: Side of the square image in pixels.
        seed: Dataset seed.
        defect_type: Override the defect type (the default is the one the dataset uses for ``index``).

    Returns:
        The clean image, the defective image and the boolean mask (``mask == (image != clean).any(-1)``).
    """
    _check_category(category)
    defect_type = defect_type or _defect_type_of(index)
    if defect_type not in DEFECT_TYPES:
        msg = f"Unknown defect type {defect_type!r}; choose from {DEFECT_TYPES}."
        raise ValueError(msg)
    rng = _rng(seed, category, "test_defect", index)
    clean = _normal_from_rng(rng, category, image_size)
    image, mask = _draw_defect(rng, clean, category, defect_type)
    return DefectSample(clean=clean, image=image, mask=mask, defect_type=defect_type)
