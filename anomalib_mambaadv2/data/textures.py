# SPDX-License-Identifier: Apache-2.0
"""Normal images of the embedded dataset: crops of the texture photographs that scikit-image ships.

Three categories (``brick``, ``grass``, ``gravel``) come from ``skimage.data.brick()``, ``.grass()`` and
``.gravel()`` (512×512 grayscale photographs). Normal images are random crops of the photograph (resized with
antialiasing, flipped, rotated by multiples of 90°, with mild photometric jitter and sensor noise), converted to RGB
with a mild per-category tint. Each image has its own random stream keyed by seed, category, split and index.
"""

from __future__ import annotations

import zlib
from functools import cache

import numpy as np
from PIL import Image

CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
_PHOTO_SIZE = 512
# Mild per-category colour casts (RGB gains) so that categories differ a little in colour.
_TINTS = {
    "brick": (1.07, 0.96, 0.86),  # warm, reddish clay
    "grass": (0.92, 1.04, 0.84),  # green cast
    "gravel": (0.99, 0.99, 1.03),  # neutral, slightly cool
}
_SPLIT_CODES = {"train": 0, "test_good": 1, "test_defect": 2}


@cache
def _photo(category: str) -> np.ndarray:
    """The 512×512 grayscale photograph of ``category`` as float32 (read-only)."""
    from skimage import data as skdata  # local import: skimage is only needed when generating

    img = np.asarray(getattr(skdata, category)(), dtype=np.float32)
    if img.ndim == 3:  # pragma: no cover - the shipped photographs are grayscale
        img = img[..., :3].mean(-1)
    img.setflags(write=False)
    return img


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """An independent random stream per (seed, category, split, index)."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), _SPLIT_CODES[split], index])


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        msg = f"Unknown category {category!r}; choose from {CATEGORIES}."
        raise ValueError(msg)


def _texture_crop(rng: np.random.Generator, category: str, size: int, scale: tuple[float, float]) -> np.ndarray:
    """Random square crop (side ``scale`` × 512) of the photograph, resized to ``size``, flipped/rotated, tinted RGB.

    Returns:
        float32 ``(size, size, 3)`` in grey levels (not clipped).
    """
    photo = _photo(category)
    side = round(rng.uniform(*scale) * _PHOTO_SIZE)
    y, x = rng.integers(0, _PHOTO_SIZE - side + 1, size=2)
    crop = Image.fromarray(np.ascontiguousarray(photo[y : y + side, x : x + side]))
    img = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    img = np.rot90(img, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return img[..., None] * np.asarray(_TINTS[category], dtype=np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _normal_from_rng(rng: np.random.Generator, category: str, size: int) -> np.ndarray:
    img = _texture_crop(rng, category, size, scale=(0.4, 0.7))
    mean = float(img.mean())
    contrast, brightness = rng.uniform(0.9, 1.1, size=2)
    img = (img - mean) * contrast + mean * brightness
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.5, 2.5))
    return _to_uint8(img)


def render_normal_image(category: str, split: str, index: int, image_size: int = 256, seed: int = 0) -> np.ndarray:
    """Regenerate one normal image exactly as :func:`make_embedded_dataset` writes it.

    Args:
        category: One of :data:`CATEGORIES`.
        split: ``"train"`` (``train/good``) or ``"test_good"`` (``test/good``).
        index: File index (``000.png`` is 0).
        image_size: Side of the square image in pixels.
        seed: Dataset seed.

    Returns:
        ``(image_size, image_size, 3)`` uint8 RGB image.
    """
    _check_category(category)
    if split not in {"train", "test_good"}:
        msg = f"split must be 'train' or 'test_good', got {split!r}"
        raise ValueError(msg)
    return _normal_from_rng(_rng(seed, category, split, index), category, image_size)
