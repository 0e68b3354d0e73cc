# SPDX-License-Identifier: Apache-2.0
"""The demo's test predictions from PyTorch and from the exported OpenVINO model, and their parity.

See :mod:`anomalib_mambaadv2.demo` (step 5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Callback

if TYPE_CHECKING:
    from .data import MultiClassMVTecAD
    from .lightning_model import MambaADv2

PARITY_ATOL = 1e-3  # largest accepted |torch - OpenVINO| of the normalised scores and maps (both in [0, 1])


@dataclass
class Predictions:
    """Test images with their labels and the predictions of one runtime.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1], as the exported model takes them.
        masks: ``(N, H, W)`` bool ground truth.
        labels: ``(N,)`` 0 = good, 1 = defect.
        categories: Category of each image.
        defect_types: Defect folder of each image (``good`` for normal ones).
        scores: ``(N,)`` normalised image scores (in (0, 1); 0.5 = the image threshold).
        maps: ``(N, H, W)`` normalised anomaly maps (in (0, 1); 0.5 = the pixel threshold).
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    categories: list[str]
    defect_types: list[str]
    scores: np.ndarray
    maps: np.ndarray


class TestOutputs(Callback):
    """Keep the test outputs of ``engine.test`` (post-processed, as the exported model returns them).

    Anomalib's post-processor normalises each test batch in place in its own ``on_test_batch_end``, which may run
    after this callback's; so the batches are kept by reference and read when the test has ended.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Any] = []

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        """Forget earlier runs."""
        del trainer, pl_module
        self.batches = []

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:
        """Keep a reference to the batch."""
        del trainer, pl_module, args, kwargs
        if outputs is not None:
            self.batches.append(outputs)

    def predictions(self, datamodule: MultiClassMVTecAD) -> Predictions:
        """The kept outputs with the raw test images (read again from the test set; inputs of the exported model)."""
        images = {}
        for batch in datamodule.test_dataloader():
            images.update(zip(batch.image_path, batch.image.numpy().astype(np.float32), strict=True))
        return _predictions(self.batches, datamodule, images)


def _predictions(batches: Sequence[Any], datamodule: MultiClassMVTecAD, images: dict[str, np.ndarray]) -> Predictions:
    paths = [p for b in batches for p in b.image_path]
    shape = images[paths[0]].shape[-2:]
    return Predictions(
        images=np.stack([images[p] for p in paths]),
        masks=np.concatenate([b.gt_mask.cpu().numpy().astype(bool).reshape(-1, *shape) for b in batches]),
        labels=np.concatenate([b.gt_label.cpu().numpy().astype(int).reshape(-1) for b in batches]),
        categories=[datamodule.category_of(p) for p in paths],
        defect_types=[Path(p).parent.name for p in paths],
        scores=np.concatenate([b.pred_score.detach().cpu().numpy().reshape(-1) for b in batches]),
        maps=np.concatenate([b.anomaly_map.detach().cpu().numpy().reshape(-1, *shape) for b in batches]),
    )


def predict_torch(model: MambaADv2, datamodule: MultiClassMVTecAD) -> Predictions:
    """Run the PyTorch model (pre-processing, network and post-processing, as exported) on every test image."""
    from anomalib.data import InferenceBatch

    model.eval()
    images, batches = {}, []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            images.update(zip(batch.image_path, batch.image.numpy().astype(np.float32), strict=True))
            out: InferenceBatch = model(batch.image)
            batches.append(batch.update(in_place=False, pred_score=out.pred_score, anomaly_map=out.anomaly_map))
    return _predictions(batches, datamodule, images)


def predict_openvino(xml_path: str | Path, reference: Predictions, batch_size: int = 8) -> Predictions:
    """Run the exported OpenVINO model (f32 inference) on the test images of ``reference``."""
    from .deploy import ExportedModel

    model = ExportedModel(xml_path, precision="f32")
    runs = [
        model.predict_batch(reference.images[i : i + batch_size]) for i in range(0, len(reference.images), batch_size)
    ]
    return dataclasses.replace(
        reference,
        scores=np.concatenate([r["score"] for r in runs]),
        maps=np.concatenate([r["anomaly_map"] for r in runs]),
    )


def compare(torch_pred: Predictions, ov_pred: Predictions) -> dict[str, Any]:
    """Largest absolute differences between two runtimes' scores and maps, and agreement of the decisions."""
    score_diff = float(np.max(np.abs(torch_pred.scores.astype(np.float64) - ov_pred.scores)))
    map_diff = float(np.max(np.abs(torch_pred.maps.astype(np.float64) - ov_pred.maps)))
    same_label = int(np.sum((torch_pred.scores > 0.5) == (ov_pred.scores > 0.5)))
    return {
        "images": len(torch_pred.scores),
        "max_abs_diff_score": score_diff,
        "max_abs_diff_map": map_diff,
        "same_decision": same_label,
        "atol": PARITY_ATOL,
        "passed": bool(score_diff <= PARITY_ATOL and map_diff <= PARITY_ATOL),
    }
