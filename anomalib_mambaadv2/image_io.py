# SPDX-License-Identifier: Apache-2.0
"""Read images the way an inspection camera writes them: 8-bit, 16-bit (or 10/12/14-bit in 16) and palette files.

PIL's ``convert("RGB")`` clips 16-bit grayscale (``I;16``) values at 255 instead of scaling them, so a 16-bit image
becomes almost white. Anomalib's own datasets read images that way (``anomalib.data.utils.read_image``); here
high-bit-depth pixels are scaled by the sensor's range, ``v / (2**bit_depth - 1)``, before going to 8-bit RGB.
Float images are refused (their range is unknown). Without ``bit_depth`` a 16-bit container is taken at its full
range (65535 = white); pass the sensor's depth (e.g. 12) when the data use only the low bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["HIGH_DEPTH_MODES", "load_rgb", "to_rgb"]

HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _scale_to_uint8(values: np.ndarray, bit_depth: int | None, container_bits: int, what: str) -> np.ndarray:
    """Integer pixels of ``bit_depth`` bits (default: the container's) → uint8, rounding to nearest."""
    bits = container_bits if bit_depth is None else int(bit_depth)
    if not 1 <= bits <= 32:
        msg = f"bit_depth must be between 1 and 32, got {bit_depth}."
        raise ValueError(msg)
    top = float(2**bits - 1)
    if values.size and (values.min() < 0 or values.max() > top):
        msg = (
            f"{what} has pixel values {int(values.min())}..{int(values.max())}, outside the {bits}-bit range "
            f"0..{int(top)}; pass the sensor's bit depth (bit_depth / --bit-depth)."
        )
        raise ValueError(msg)
    return np.rint(values.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1)))


def to_rgb(image: Image.Image | np.ndarray, bit_depth: int | None = None, name: str = "image") -> Image.Image:
    """An 8-bit RGB PIL image from any PIL image or array, with high-bit-depth pixels scaled, not clipped.

    Args:
        image: A PIL image (any mode but float) or an array: uint8/uint16 (H, W), (H, W, 3) or (H, W, 4), or float
            in [0, 1].
        bit_depth: Significant bits of integer pixels wider than 8 bits (default: the container's, 16 for uint16).
        name: What to call the image in error messages (e.g. its path).

    Raises:
        ValueError: For float images (PIL mode ``F``), non-finite or out-of-range float arrays, integer values
            beyond ``bit_depth`` bits, or arrays of another shape.
    """
    if isinstance(image, Image.Image):
        if image.mode in HIGH_DEPTH_MODES:
            values = np.asarray(image)
            if values.dtype.itemsize > 2 and bit_depth is None:
                bit_depth = 16 if values.size == 0 or values.max() <= 65535 else 32
            return _gray_to_rgb(_scale_to_uint8(values, bit_depth, 16, name))
        if image.mode == "F":
            msg = (
                f"{name} is a floating-point image (PIL mode 'F'); its value range is unknown. Save it as 8- or "
                "16-bit integers, or pass an array scaled to [0, 1]."
            )
            raise ValueError(msg)
        return image if image.mode == "RGB" else image.convert("RGB")  # palette, L, LA, RGBA (alpha dropped), CMYK
    array = np.asarray(image)
    if array.ndim not in {2, 3} or (array.ndim == 3 and array.shape[-1] not in {1, 3, 4}):
        msg = f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {array.shape}."
        raise ValueError(msg)
    if array.ndim == 3:
        array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            msg = f"{name} contains NaN or infinite pixel values; replace them before inference."
            raise ValueError(msg)
        if array.size and (array.min() < 0 or array.max() > 1):
            msg = f"{name}: float pixels must lie in [0, 1], got {array.min():.4g}..{array.max():.4g}."
            raise ValueError(msg)
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if array.dtype.kind not in "ui":
            msg = f"{name}: unsupported pixel type {array.dtype}."
            raise ValueError(msg)
        array = _scale_to_uint8(array, bit_depth, 8 * array.dtype.itemsize, name)
    if array.ndim == 2:
        return _gray_to_rgb(array)
    return Image.fromarray(np.ascontiguousarray(array))


def load_rgb(path: str | Path, bit_depth: int | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB (see :func:`to_rgb`); the file is closed on return.

    Raises:
        OSError / PIL.UnidentifiedImageError: The file cannot be read or decoded.
        ValueError: See :func:`to_rgb`.
    """
    with Image.open(path) as img:
        img.load()
        return to_rgb(img, bit_depth=bit_depth, name=str(path)).copy()
