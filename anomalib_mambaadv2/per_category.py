# SPDX-License-Identifier: Apache-2.0
"""Per-category test metrics for multi-class datamodules.

When the test datamodule can tell each sample's category (``datamodule.category_of(path)``, as the
:mod:`anomalib_mambaadv2.data` datamodules can), every test metric of the model's evaluator is also computed per
category. At the end of ``test`` the table (one row per category and their mean) is printed, logged as
``<category>/<metric>`` and ``mean/<metric>``, and written to ``<run folder>/per_category_metrics.csv``. The mean row
is the mean of the category rows, as papers report it.

When the model has per-category thresholds (:mod:`anomalib_mambaadv2.category_thresholds`), the table also has
``image_F1_calibrated`` and ``pixel_F1_calibrated`` next to the F1Max columns: the F1 of the predicted labels and masks
at the thresholds calibrated on validation, so the gap to the best possible threshold (F1Max) shows.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from anomalib.metrics import F1Score
from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)

CALIBRATED = {"image_F1_calibrated": ("pred_label", "gt_label"), "pixel_F1_calibrated": ("pred_mask", "gt_mask")}


def calibrated_metrics() -> list:
    """F1 of the predicted labels and masks (set at the per-category thresholds), named as in the table."""
    metrics = []
    for name, fields in CALIBRATED.items():
        metric = F1Score(fields=list(fields), strict=False)
        metric.name = name
        metrics.append(metric)
    return metrics


def column_order(names: list[str]) -> list[str]:
    """``names`` with each ``*_F1_calibrated`` column moved right after its level's F1Max column."""
    order = [n for n in names if n not in CALIBRATED]
    for name in (n for n in names if n in CALIBRATED):
        anchor = name.replace("_F1_calibrated", "_F1Max")
        order.insert(order.index(anchor) + 1 if anchor in order else len(order), name)
    return order


def subset_batch(batch: Any, indices: list[int]) -> Any:
    """The samples ``indices`` of an Anomalib batch (tensor and list fields indexed, others kept)."""
    size = len(batch.image_path)
    index = torch.as_tensor(indices, dtype=torch.long)
    updates = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size:
            updates[field.name] = value[index.to(value.device)]
        elif isinstance(value, list) and len(value) == size:
            updates[field.name] = [value[i] for i in indices]
    return dataclasses.replace(batch, **updates)


class PerCategoryMetrics(Callback):
    """Compute the evaluator's test metrics per category.

    Args:
        filename: Name of the CSV written into the trainer's ``default_root_dir``.
    """

    def __init__(self, filename: str = "per_category_metrics.csv") -> None:
        self.filename = filename
        self.metrics: dict[str, list] = {}
        self.rows: dict[str, dict[str, float]] = {}
        self.csv_path: Path | None = None

    @staticmethod
    def _datamodule(trainer: Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        return datamodule if callable(getattr(datamodule, "category_of", None)) else None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Reset the per-category metric copies."""
        del trainer, pl_module
        self.metrics, self.rows = {}, {}

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Route each sample of the (post-processed) outputs to its category's metrics."""
        del batch, batch_idx, dataloader_idx
        datamodule = self._datamodule(trainer)
        evaluator = getattr(pl_module, "evaluator", None)
        if datamodule is None or evaluator is None or outputs is None:
            return
        categories = [datamodule.category_of(p) for p in outputs.image_path]
        for category in dict.fromkeys(categories):
            if category not in self.metrics:
                metrics = [copy.deepcopy(m) for m in evaluator.test_metrics]
                if getattr(pl_module, "category_thresholds", None):
                    metrics += calibrated_metrics()
                self.metrics[category] = [m.to(pl_module.device) for m in metrics]
                for metric in self.metrics[category]:
                    metric.reset()
            part = subset_batch(outputs, [i for i, c in enumerate(categories) if c == category])
            for metric in self.metrics[category]:
                metric.update(part)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, log, print and write the per-category table."""
        if not self.metrics:
            return
        for category in sorted(self.metrics):
            row = {}
            for metric in self.metrics[category]:
                try:
                    row[metric.name] = float(metric.compute())
                except Exception as err:
                    logger.warning("%s of category %s cannot be computed: %s", metric.name, category, err)
                    row[metric.name] = math.nan
            self.rows[category] = row
        names = column_order(list(next(iter(self.rows.values()))))
        self.rows["mean"] = {n: sum(r[n] for r in self.rows.values()) / len(self.rows) for n in names}
        for category, row in self.rows.items():
            for name, value in row.items():
                pl_module.log(f"{category}/{name}", value, sync_dist=False)
        if trainer.is_global_zero:
            self._write(trainer, names)
            print(self.table(names))

    def table(self, names: list[str]) -> str:
        """The per-category table as markdown."""
        lines = ["| category | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(f"{r[n]:.4f}" for n in names) + " |" for c, r in self.rows.items()]
        return "\n".join(lines)

    def _write(self, trainer: Trainer, names: list[str]) -> None:
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = folder / self.filename
        with self.csv_path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["category", *names])
            for category, row in self.rows.items():
                writer.writerow([category, *(f"{row[n]:.6f}" for n in names)])
        logger.info("Per-category metrics written to %s", self.csv_path)
