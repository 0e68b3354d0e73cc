# SPDX-License-Identifier: Apache-2.0
"""Embedded offline anomaly-detection dataset built from the texture photographs that scikit-image ships.

Three categories (``brick``, ``grass``, ``gravel``) come from ``skimage.data.brick()``, ``.grass()`` and
``.gravel()`` (512×512 grayscale photographs). Normal images are random crops of the photograph (resized with
antialiasing, flipped, rotated by multiples of 90°, with mild photometric jitter and sensor noise), converted to RGB
with a mild per-category tint. Test defects are drawn onto normal images:

* ``scratch``: a thin, tapered, curved dark or bright line (anti-aliased Bézier curve),
* ``hole``: a dark pit with a soft edge, darker towards its centre,
* ``foreign``: a patch of another category's texture pasted inside an irregular blob,
* ``stain``: a smooth colour / brightness change inside a smooth-noise-shaped blob.

Ground-truth masks are exact: a mask pixel is set if and only if the defect changed that pixel (changes of at most
``CHANGE_EPS`` grey levels are reverted to the clean value, so ``mask == (defective != clean).any(-1)``). The files
follow the MVTec AD layout, so ``anomalib.data.MVTecAD(root=root, category=...)`` and ``Folder`` read them::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect_type>/000.png
    root/<category>/ground_truth/<defect_type>/000_mask.png

Generation is deterministic (each image has its own random stream keyed by seed, category, split and index) and
cached through a manifest ``root/.embedded.json``.

Command line::

    python -m anomalib_mambaadv2.data.embedded --root datasets/embedded --size 256
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "CATEGORIES",
    "CHANGE_EPS",
    "DEFECT_TYPES",
    "MANIFEST_NAME",
    "DefectSample",
    "EmbeddedDatasetExistsError",
    "make_embedded_dataset",
    "render_defect_sample",
    "render_normal_image",
]

CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "foreign", "stain")
MANIFEST_NAME = ".embedded.json"
GENERATOR_VERSION = 1
CHANGE_EPS = 2
"""Per-channel changes of at most this many grey levels are reverted to the clean value (and left out of the mask)."""

_MIN_AREA, _MAX_AREA = 0.005, 0.08  # accepted defect area, fraction of the image
_MIN_MEAN_CHANGE = 20.0  # accepted mean |change| inside the mask, grey levels (channel mean) ...
_MIN_REL_CHANGE = 0.6  # ... and at least this fraction of the clean image's grey-level standard deviation
_MAX_TRIES = 200
_PHOTO_SIZE = 512
# Mild per-category colour casts (RGB gains) so that categories differ a little in colour.
_TINTS = {
    "brick": (1.07, 0.96, 0.86),  # warm, reddish clay
    "grass": (0.92, 1.04, 0.84),  # green cast
    "gravel": (0.99, 0.99, 1.03),  # neutral, slightly cool
}
_SPLIT_CODES = {"train": 0, "test_good": 1, "test_defect": 2}


class EmbeddedDatasetExistsError(FileExistsError):
    """The target folder holds data that does not match the requested parameters (or was not made by this module)."""


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
# Sources and random streams
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# Dataset on disk
# ----------------------------------------------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _expected_counts(n_train: int, n_test_good: int, n_test_defect: int) -> dict[str, int]:
    counts = {"train/good": n_train, "test/good": n_test_good}
    for k, defect in enumerate(DEFECT_TYPES):
        n = len(range(k, n_test_defect, len(DEFECT_TYPES)))
        if n:
            counts[f"test/{defect}"] = n
            counts[f"ground_truth/{defect}"] = n
    return counts


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _write_manifest(root: Path, params: dict[str, Any], complete: bool) -> None:
    manifest = {
        "generator": "anomalib_mambaadv2.data.embedded",
        "version": GENERATOR_VERSION,
        "params": params,
        "categories": list(params["categories"]),
        "counts": _expected_counts(params["n_train"], params["n_test_good"], params["n_test_defect"]),
        "complete": complete,
    }
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(root / MANIFEST_NAME)


def _files_present(root: Path, manifest: dict[str, Any]) -> bool:
    for category in manifest.get("categories", []):
        for sub, n in manifest.get("counts", {}).items():
            if sum(1 for _ in (root / category / sub).glob("*.png")) != n:
                return False
    return True


def _generate_category(root: Path, category: str, params: dict[str, Any]) -> None:
    size, seed = params["image_size"], params["seed"]
    base = root / category
    for sub in _expected_counts(params["n_train"], params["n_test_good"], params["n_test_defect"]):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(params["n_train"]):
        _save_png(render_normal_image(category, "train", i, size, seed), base / "train" / "good" / f"{i:03d}.png")
    for i in range(params["n_test_good"]):
        _save_png(render_normal_image(category, "test_good", i, size, seed), base / "test" / "good" / f"{i:03d}.png")
    for i in range(params["n_test_defect"]):
        sample = render_defect_sample(category, i, size, seed)
        name = f"{i // len(DEFECT_TYPES):03d}"
        _save_png(sample.image, base / "test" / sample.defect_type / f"{name}.png")
        _save_png(sample.mask.astype(np.uint8) * 255, base / "ground_truth" / sample.defect_type / f"{name}_mask.png")


def make_embedded_dataset(
    root: str | Path,
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    categories: Sequence[str] = CATEGORIES,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) the embedded texture dataset in MVTec AD layout under ``root``.

    The result is cached: a manifest ``root/.embedded.json`` records the parameters, and a later call with the same
    parameters returns at once without touching the files. Only the category folders named in that manifest are ever
    deleted; anything else under ``root`` is left alone.

    Args:
        root: Dataset root; ``root/<category>/...`` is written (``MVTecAD(root=root, category=...)`` reads it).
        image_size: Side of the square images in pixels (at least 32).
        n_train: Normal training images per category (``train/good``).
        n_test_good: Normal test images per category (``test/good``).
        n_test_defect: Defective test images per category, spread evenly over :data:`DEFECT_TYPES` in turn.
        categories: Subset of :data:`CATEGORIES` to write.
        seed: Non-negative seed; the same seed gives byte-identical files.
        overwrite: If ``root`` holds an embedded dataset made with other parameters, delete its category folders and
            regenerate. Without it such a mismatch raises :class:`EmbeddedDatasetExistsError`. A dataset whose
            parameters match is reused either way.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For invalid parameters.
        EmbeddedDatasetExistsError: If ``root`` holds a different embedded dataset and ``overwrite`` is false, or a
            category folder that this module did not create.
    """
    root = Path(root)
    categories = list(dict.fromkeys(categories))
    for category in categories:
        _check_category(category)
    if not categories:
        msg = "categories must name at least one of " + ", ".join(CATEGORIES)
        raise ValueError(msg)
    if int(image_size) < 32:
        msg = f"image_size must be at least 32, got {image_size}"
        raise ValueError(msg)
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0 or seed < 0:
        msg = "n_train must be >= 1 and n_test_good, n_test_defect and seed must be >= 0"
        raise ValueError(msg)
    params = {
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "categories": categories,
        "seed": int(seed),
    }

    manifest = _read_manifest(root)
    ours: list[str] = []
    if manifest is not None:
        ours = [c for c in manifest.get("categories", []) if c in CATEGORIES]
        same = manifest.get("version") == GENERATOR_VERSION and manifest.get("params") == params
        if same and manifest.get("complete") and _files_present(root, manifest):
            return root
        if not same and not overwrite:
            msg = (
                f"{root} already holds an embedded dataset made with different parameters "
                f"({manifest.get('params')}, generator version {manifest.get('version')}); requested {params} "
                f"(version {GENERATOR_VERSION}). Pass overwrite=True to replace it, or choose another root."
            )
            raise EmbeddedDatasetExistsError(msg)
    foreign = [c for c in categories if (root / c).exists() and c not in ours]
    if foreign:
        msg = (
            f"{root} already contains folder(s) {foreign} that were not created by make_embedded_dataset "
            f"(no matching {MANIFEST_NAME}); refusing to write over them. Choose another root."
        )
        raise EmbeddedDatasetExistsError(msg)

    for category in ours:  # only folders this module made, as recorded in its manifest
        shutil.rmtree(root / category, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(root, params, complete=False)
    for category in categories:
        _generate_category(root, category, params)
    _write_manifest(root, params, complete=True)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: generate the dataset and print its path and file counts."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_mambaadv2.data.embedded",
        description="Generate the embedded texture anomaly dataset (MVTec AD layout) from scikit-image's photographs.",
    )
    parser.add_argument("--root", default="datasets/embedded", help="output folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=60, help="normal training images per category")
    parser.add_argument("--n-test-good", type=int, default=20, help="normal test images per category")
    parser.add_argument("--n-test-defect", type=int, default=30, help="defective test images per category")
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an embedded dataset with other parameters")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        root = make_embedded_dataset(
            args.root,
            image_size=args.size,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_test_defect=args.n_test_defect,
            categories=args.categories,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (EmbeddedDatasetExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    elapsed = time.perf_counter() - start
    print(f"{root.resolve()}  ({elapsed:.1f} s)")
    counts = _expected_counts(args.n_train, args.n_test_good, args.n_test_defect)
    for category in dict.fromkeys(args.categories):
        parts = ", ".join(f"{sub}: {n}" for sub, n in counts.items() if not sub.startswith("ground_truth"))
        print(f"  {category}: {parts}")


if __name__ == "__main__":
    main()
