# SPDX-License-Identifier: Apache-2.0
"""Per-category image and pixel thresholds for one multi-class model.

A unified model serves several products, and one global threshold over-flags the noisy ones. With a multi-class
datamodule (:mod:`anomalib_mambaadv2.data`, whose ``category_of`` names each sample's category) the
:class:`CategoryThresholds` callback calibrates, at the end of every validation epoch, one image and one pixel
threshold per category with the rule Anomalib uses for its global threshold (:class:`anomalib.metrics.
F1AdaptiveThreshold`), on the raw scores and maps of that category's validation images (normal held-out images and
the synthetic anomalies made from them), never on test labels. A category whose validation images lack anomalous
(or normal) examples at a level falls back to the global threshold, and that is recorded (``"source": "global"``).

The thresholds live in ``model.category_thresholds`` (raw scores, plain data), are saved in the checkpoint and
written with every export as ``category_thresholds.json`` next to ``model.onnx`` / ``model.xml`` / ``model.pt``, mapped
through the post-processor's normalisation into the space the exported model outputs, so that a runtime labels
``pred_score >= categories[name]["image"]`` and masks ``anomaly_map >= categories[name]["pixel"]``. In ``test`` and
``predict`` the torch labels (``pred_label``, ``pred_mask``) of samples of a calibrated category follow the same rule,
so torch and exported inference agree; samples of other categories (or without a multi-class datamodule) keep the
post-processor's global labels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data.utils import read_image
from anomalib.metrics import F1AdaptiveThreshold
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from .deploy import THRESHOLDS_FILE, THRESHOLDS_VERSION
from .per_category import subset_batch

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "mambaadv2_category_thresholds"
LEVELS = {"image": ("pred_score", "gt_label"), "pixel": ("anomaly_map", "gt_mask")}
_GRID = 64  # points per side compared when matching a synthetic anomaly to its source image


# ---- calibration ------------------------------------------------------------------------------------------------
class CategoryCalibration:
    """Validation statistics of one category: Anomalib's F1-adaptive threshold per level, and example counts.

    Args:
        device: Device of the model outputs.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        # no DDP sync: ranks may see different categories; rank 0's thresholds are broadcast instead
        self.metrics = {
            level: F1AdaptiveThreshold(fields=list(fields), strict=False, sync_on_compute=False).to(device)
            for level, fields in LEVELS.items()
        }
        self.counts = {level: [0, 0] for level in LEVELS}  # [normal, anomalous] images or pixels

    def update(self, batch: Any) -> None:
        """Add a batch of raw (un-normalised) validation outputs of this category."""
        for level, (pred, target) in LEVELS.items():
            gt = getattr(batch, target, None)
            if gt is None or getattr(batch, pred, None) is None:
                continue
            self.metrics[level].update(batch)
            positives = int(gt.bool().sum())
            self.counts[level][0] += gt.numel() - positives
            self.counts[level][1] += positives

    def compute(self) -> dict[str, Any]:
        """Raw thresholds (None: no normal or no anomalous examples at that level, use the global one) and counts."""
        entry: dict[str, Any] = {}
        for level in LEVELS:
            normal, anomalous = self.counts[level]
            entry[level] = float(self.metrics[level].compute()) if normal and anomalous else None
        entry["val_images"] = sum(self.counts["image"])
        entry["val_anomalous"] = self.counts["image"][1]
        return entry


def synthetic_categories(dataset: Any, category_of: Any) -> dict[str, str]:
    """Category of each synthetic anomaly in an Anomalib ``SyntheticAnomalyDataset`` (the synthetic validation split).

    Anomalib writes synthetic anomalous images to a temporary folder and keeps neither their source path nor their
    category. Outside its mask a synthetic image equals its source pixel for pixel, so each one is matched to the
    held-out source image (of the same size) that agrees best with it on a grid of unmasked pixels.

    Args:
        dataset: The validation dataset (``samples`` and ``source_samples`` data frames); others give ``{}``.
        category_of: ``category_of(path)`` of the datamodule (ValueError for paths outside every category).

    Returns:
        ``{synthetic image path: category}``; images that match no source are left out.
    """
    samples, sources = getattr(dataset, "samples", None), getattr(dataset, "source_samples", None)
    if samples is None or sources is None or "image_path" not in getattr(sources, "columns", ()):
        return {}
    source_paths = [str(p) for p in sources.image_path]
    kept, known = {str(p) for p in samples.image_path}, set(source_paths)
    synthetic = [(str(r.image_path), r.mask_path) for r in samples.itertuples() if str(r.image_path) not in known]
    candidates = {}
    for path in source_paths:
        if path not in kept:
            try:
                candidates[path] = category_of(path)
            except ValueError:
                continue
    if not synthetic or not candidates:
        return {}
    if len(set(candidates.values())) == 1:
        only = next(iter(candidates.values()))
        return {path: only for path, _ in synthetic}
    probes: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = {}
    for path, category in candidates.items():
        image = read_image(path) * 255.0
        probes.setdefault(image.shape[:2], []).append((category, image[_grid(image.shape[:2])]))
    found = {}
    for path, mask_path in synthetic:
        image = read_image(path) * 255.0
        grid = _grid(image.shape[:2])
        valid = np.ones(image.shape[:2], bool)
        if isinstance(mask_path, str) and mask_path and Path(mask_path).is_file():
            mask = Image.open(mask_path).convert("L").resize(image.shape[1::-1], Image.NEAREST)
            valid = np.asarray(mask) == 0
        points = valid[grid] if valid[grid].any() else np.ones_like(valid[grid])
        same_size = probes.get(image.shape[:2], [])
        errors = [(float(np.abs(probe - image[grid])[points].mean()), c) for c, probe in same_size]
        if errors and min(errors)[0] <= 1.0:
            found[path] = min(errors)[1]
    return found


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    ys = np.linspace(0, shape[0] - 1, min(shape[0], _GRID)).astype(int)
    xs = np.linspace(0, shape[1] - 1, min(shape[1], _GRID)).astype(int)
    return np.ix_(ys, xs)


class CategoryResolver:
    """Category of a sample path: ``datamodule.category_of``, or the source of a synthetic validation anomaly.

    Args:
        datamodule: A datamodule with ``category_of(path)``.
    """

    def __init__(self, datamodule: Any) -> None:
        self.datamodule = datamodule
        self._synthetic: dict[str, str] | None = None

    def __call__(self, paths: list[str]) -> list[str | None]:
        """Category of each path, None where it cannot be told."""
        categories: list[str | None] = []
        for path in paths:
            try:
                categories.append(self.datamodule.category_of(path))
            except ValueError:
                if self._synthetic is None:
                    val_data = getattr(self.datamodule, "val_data", None)
                    self._synthetic = synthetic_categories(val_data, self.datamodule.category_of)
                categories.append(self._synthetic.get(str(path)))
        return categories


# ---- the space the exported model outputs -----------------------------------------------------------------------
def _normalising(post_processor: Any, level: str) -> tuple[torch.Tensor, ...] | None:
    """(min, max, global threshold) the post-processor normalises ``level`` with, or None if it does not."""
    if post_processor is None or not getattr(post_processor, "enable_normalization", False):
        return None
    try:
        stats = tuple(getattr(post_processor, f"{level}_{name}") for name in ("min", "max", "threshold"))
    except AttributeError:
        return None
    return stats if hasattr(post_processor, "_normalize") and torch.isfinite(stats[0] + stats[1]) else None


def to_output_space(raw: float, level: str, post_processor: Any) -> float:
    """A raw threshold mapped through the post-processor's normalisation (what the model's outputs go through)."""
    stats = _normalising(post_processor, level)
    if stats is None:
        return float(raw)
    value = torch.tensor(raw, dtype=stats[0].dtype, device=stats[0].device)
    return float(post_processor._normalize(value, *stats))


def global_threshold(level: str, post_processor: Any) -> float | None:
    """The post-processor's global threshold of ``level`` in output space (0.5 by default), None if it has none."""
    if _normalising(post_processor, level) is not None:
        return 1.0 - float(getattr(post_processor, f"{level}_sensitivity", 0.5))
    value = getattr(post_processor, f"{level}_threshold", None)
    return float(value) if value is not None and not torch.isnan(torch.as_tensor(value)) else None


def output_thresholds(thresholds: dict[str, dict[str, Any]], post_processor: Any) -> dict[str, dict[str, Any]]:
    """Per-category thresholds in output space, with ``<level>_source`` ``"category"`` or ``"global"`` (fallback)."""
    table = {}
    for category, entry in sorted(thresholds.items()):
        row: dict[str, Any] = {}
        for level in LEVELS:
            raw = entry.get(level)
            own = raw is not None and math.isfinite(raw)
            row[level] = to_output_space(raw, level, post_processor) if own else global_threshold(level, post_processor)
            row[f"{level}_source"] = "category" if own else "global"
        row.update({k: entry[k] for k in ("val_images", "val_anomalous") if k in entry})
        table[category] = row
    return table


def _describe(post_processor: Any) -> dict[str, Any]:
    levels = {}
    for level in LEVELS:
        stats = _normalising(post_processor, level)
        if stats is not None:
            levels[level] = dict(zip(("min", "max", "threshold"), (float(s) for s in stats), strict=True))
    name = type(post_processor).__name__
    if not levels:
        text = f"raw scores: {name} does not normalise, so thresholds apply to the raw pred_score / anomaly_map"
    else:
        text = (
            f"normalised scores: the exported model's pred_score and anomaly_map after {name}'s normalisation "
            "(0.5 = the global threshold); each raw validation threshold was mapped through the same normalisation "
            "(raw statistics below). Label: pred_score >= image; mask: anomaly_map >= pixel."
        )
    return {"post_processor": name, "space": "normalised" if levels else "raw", "description": text, **levels}


def thresholds_document(thresholds: dict[str, dict[str, Any]], post_processor: Any) -> dict[str, Any]:
    """The content of ``category_thresholds.json`` (version 1)."""
    return {
        "version": THRESHOLDS_VERSION,
        "categories": output_thresholds(thresholds, post_processor),
        "global": {level: global_threshold(level, post_processor) for level in LEVELS},
        "normalisation": _describe(post_processor),
        "raw": {c: {level: e.get(level) for level in LEVELS} for c, e in sorted(thresholds.items())},
        "calibration": "anomalib.metrics.F1AdaptiveThreshold per category on the validation split (raw scores)",
    }


def write_thresholds_file(
    folder: str | Path, thresholds: dict[str, dict[str, Any]], post_processor: Any
) -> Path | None:
    """Write ``category_thresholds.json`` into ``folder`` (atomically); without thresholds remove a stale one."""
    path = Path(folder) / THRESHOLDS_FILE
    if not thresholds:
        if path.is_file():
            path.unlink()
            logger.info("Removed %s of an earlier export: this model has no per-category thresholds.", path)
        return None
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(thresholds_document(thresholds, post_processor), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    logger.info("Per-category thresholds written to %s", path)
    return path


# ---- labels -----------------------------------------------------------------------------------------------------
def apply_thresholds(batch: Any, categories: list[str | None], table: dict[str, dict[str, Any]]) -> None:
    """Set ``pred_label`` / ``pred_mask`` of the samples of calibrated categories from their thresholds (in place).

    ``batch`` holds post-processed (output-space) scores; ``table`` is :func:`output_thresholds`. Samples of other
    categories keep their labels.
    """
    for level, (source, target) in (("image", ("pred_score", "pred_label")), ("pixel", ("anomaly_map", "pred_mask"))):
        values, labels = getattr(batch, source, None), getattr(batch, target, None)
        if values is None or labels is None:
            continue
        limits = [(table.get(c) or {}).get(level) if c is not None else None for c in categories]
        limit = torch.tensor([math.nan if t is None else t for t in limits], dtype=values.dtype, device=values.device)
        limit = limit.view(-1, *([1] * (values.ndim - 1)))
        own = (values >= limit).reshape(labels.shape)
        keep = torch.isnan(limit).expand_as(values).reshape(labels.shape)
        setattr(batch, target, torch.where(keep, labels.bool(), own))


class CategoryThresholds(Callback):
    """Calibrate per-category thresholds on validation; label test/predict samples with them.

    Active only with a datamodule that has ``category_of(path)``. The thresholds are stored on the model as
    ``pl_module.category_thresholds`` (``{category: {"image": raw, "pixel": raw, ...}}``, None = global fallback).
    With DDP each rank sees part of the validation set; rank 0's thresholds are broadcast to every rank.
    """

    def __init__(self) -> None:
        self._calibrations: dict[str, CategoryCalibration] = {}
        self._resolver: CategoryResolver | None = None
        self._table: dict[str, dict[str, Any]] | None = None

    def _categories(self, trainer: Trainer, batch: Any) -> list[str | None] | None:
        datamodule = getattr(trainer, "datamodule", None)
        paths = getattr(batch, "image_path", None)
        if batch is None or paths is None or not callable(getattr(datamodule, "category_of", None)):
            return None
        if self._resolver is None or self._resolver.datamodule is not datamodule:
            self._resolver = CategoryResolver(datamodule)
        return self._resolver(list(paths))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a new calibration."""
        del trainer, pl_module
        self._calibrations = {}

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args, **kwargs
    ) -> None:
        """Route the raw validation outputs to their categories' statistics."""
        del args, kwargs
        categories = None if trainer.sanity_checking else self._categories(trainer, outputs)
        for category in dict.fromkeys(c for c in categories or () if c is not None):
            calibration = self._calibrations.setdefault(category, CategoryCalibration(pl_module.device))
            calibration.update(subset_batch(outputs, [i for i, c in enumerate(categories) if c == category]))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the thresholds and store them on the model."""
        if trainer.sanity_checking or not callable(getattr(getattr(trainer, "datamodule", None), "category_of", None)):
            return
        thresholds = {c: calibration.compute() for c, calibration in sorted(self._calibrations.items())}
        thresholds = trainer.strategy.broadcast(thresholds, src=0)
        self._calibrations = {}
        if not thresholds:
            return
        pl_module.category_thresholds = thresholds
        for category, entry in thresholds.items():
            for level in LEVELS:
                if entry[level] is None:
                    logger.info(
                        "Category %r: no normal or no anomalous validation examples at %s level; using the global "
                        "%s threshold for it.", category, level, level,
                    )  # fmt: skip

    def _label(self, trainer: Trainer, pl_module: LightningModule, outputs: Any) -> None:
        thresholds = getattr(pl_module, "category_thresholds", None)
        post_processor = getattr(pl_module, "post_processor", None)
        if not thresholds or outputs is None or not getattr(post_processor, "enable_thresholding", False):
            return
        categories = self._categories(trainer, outputs)
        if categories is None:
            return
        if self._table is None:
            self._table = output_thresholds(thresholds, post_processor)
        apply_thresholds(outputs, categories, self._table)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Map the thresholds into output space afresh (the post-processor may have been refitted)."""
        del trainer, pl_module
        self._table = None

    on_predict_epoch_start = on_test_epoch_start

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args, **kwargs) -> None:
        """Per-category labels for the post-processed test outputs."""
        del args, kwargs
        self._label(trainer, pl_module, outputs)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args, **kwargs) -> None:
        """Per-category labels for the post-processed predictions."""
        del args, kwargs
        self._label(trainer, pl_module, outputs)
