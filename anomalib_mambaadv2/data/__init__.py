# SPDX-License-Identifier: Apache-2.0
"""Datasets for MambaADv2 that need no download (model-agnostic: nothing here imports the model modules).

``make_embedded_dataset(root)`` writes an MVTec AD-layout anomaly dataset built from scikit-image's texture
photographs (categories ``brick``, ``grass``, ``gravel``), readable by
``anomalib.data.MVTecAD(root=root, category=...)``.
``MultiClassMVTecAD``, ``MultiClassVisa`` and ``MultiClassFolder`` train one model on several categories at once and
keep each sample's category for per-category results.

The names below load on first use, so ``python -m anomalib_mambaadv2.data.embedded`` runs without a double import.
"""

from importlib import import_module
from typing import Any

_EMBEDDED = (
    "CATEGORIES",
    "CHANGE_EPS",
    "DEFECT_TYPES",
    "MANIFEST_NAME",
    "DefectSample",
    "EmbeddedDatasetExistsError",
    "make_embedded_dataset",
    "prepare_dataset",
    "render_defect_sample",
    "render_normal_image",
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})  # image files in a folder
_MULTICLASS = ("MultiClassDataModule", "MultiClassFolder", "MultiClassMVTecAD", "MultiClassVisa")
__all__ = ["IMAGE_SUFFIXES", *_EMBEDDED, *_MULTICLASS]  # all but IMAGE_SUFFIXES resolved lazily by __getattr__


def __getattr__(name: str) -> Any:
    if name in _EMBEDDED:
        return getattr(import_module(".embedded", __name__), name)
    if name in _MULTICLASS:
        return getattr(import_module(".multiclass", __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
