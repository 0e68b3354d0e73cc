# SPDX-License-Identifier: Apache-2.0
"""INT8 post-training quantisation (NNCF) of an exported MambaADv2 that keeps the anomaly scoring in f32.

Anomalib's ``to_openvino(compression_type=INT8_PTQ | INT8_ACQ)`` runs ``nncf.quantize`` over the whole graph. On
trained MambaADv2 models that ruins the ranking (constant scores from a 1-epoch model; image AUROC 0.86 → 0.63 on a
64-px, 3-epoch one): NNCF puts 8-bit quantisers on the inputs of the anomaly map's bilinear upsampling and Gaussian
blur and of the post-processor's score normalisation, so the ``1 − cos`` maps (a few hundredths between normal and
defective pixels) are rounded to 1/256 of their calibration range, which the normalisation then magnifies. Keeping
that *scoring head* (everything downstream of the cosine distances) in f32 restores the ranking (0.84). The rest
of the graph is quantised where it pays: convolutions and matrix products with a weight operand only. The decoder's
element-wise scan arithmetic (cumsum, exp, rotations, norms) and its activation × activation products (decay masks,
C·Bᵀ, state passing) stay in f32: quantising them did not change the metrics of a tiny trained model but made the
CPU graph slower (a quantise / dequantise pair around each small operation).

``MambaADv2`` has :class:`Int8ExportMixin` among its bases, so Anomalib's own route uses this module
(``anomalib export --export_type openvino --compression_type INT8_PTQ``, ``engine.export(...,
compression_type=CompressionType.INT8_PTQ, datamodule=dm)``, or ``INT8_ACQ`` with ``metric`` and ``max_drop``); or call
:func:`post_training_quantization` / :func:`accuracy_control_quantization` on an ``ov.Model`` yourself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openvino as ov
    from anomalib import TaskType
    from anomalib.data import AnomalibDataModule
    from nncf import IgnoredScope
    from torch.utils.data import DataLoader
    from torchmetrics import Metric

WEIGHT_OPS = ("Convolution", "GroupConvolution", "MatMul")  # the only ops given int8 inputs
HEAD_SEED = "ReduceL2"  # the norms of F.cosine_similarity: where the scoring head starts
NOT_IN_HEAD = ("MatMul", "GroupConvolution")  # the head has neither; finding one means the seed was wrong


def _has_weight(op: Any) -> bool:
    """Whether one input of ``op`` is a constant (possibly behind a Convert, as in fp16-compressed IRs)."""
    for value in op.inputs():
        node = value.get_source_output().get_node()
        if node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            return True
    return False


def scoring_head(model: ov.Model) -> set[str]:
    """Friendly names of the ops from the cosine distances to the outputs (anomaly map, blur, score, normalisation).

    Raises:
        ValueError: If the graph has no cosine distance, or the ops after it include decoder operations (the graph is
            not MambaADv2's, or its layout changed).
    """
    todo = [op for op in model.get_ops() if op.get_type_name() == HEAD_SEED]
    if not todo:
        msg = f"no {HEAD_SEED} op (cosine distance) in the graph: not an exported MambaADv2?"
        raise ValueError(msg)
    head: dict[str, Any] = {}
    while todo:
        op = todo.pop()
        if op.get_friendly_name() in head:
            continue
        head[op.get_friendly_name()] = op
        todo += [target.get_node() for output in op.outputs() for target in output.get_target_inputs()]
    wrong = sorted(name for name, op in head.items() if op.get_type_name() in NOT_IN_HEAD)
    if wrong:
        msg = f"the ops after the cosine distances include {wrong[:3]}: cannot tell the scoring head apart"
        raise ValueError(msg)
    return set(head)


def fp32_scope(model: ov.Model) -> IgnoredScope:
    """NNCF ignored scope: every op but the weight-bearing convolutions and matrix products outside the head."""
    from nncf import IgnoredScope

    head = scoring_head(model)
    keep = [
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() not in WEIGHT_OPS or not _has_weight(op) or op.get_friendly_name() in head
    ]
    return IgnoredScope(names=keep, validate=False)


class _Batches:
    """Re-iterable batches of a data loader; batches of another size than a static model batch are skipped."""

    def __init__(self, loader: DataLoader, batch: int | None) -> None:
        self.loader, self.batch = loader, batch

    def __iter__(self) -> Iterator[Any]:
        for item in self.loader:
            if self.batch is None or item.image.shape[0] == self.batch:
                yield item


def _image_array(item: Any) -> Any:
    return item.image.numpy()


def match_static_batch(model: ov.Model, datamodule: AnomalibDataModule) -> int | None:
    """Give ``datamodule`` the model's batch size if it is static (returned; None for a dynamic batch).

    Anomalib's compression sets only ``train_batch_size``, then calibrates on the eval-size validation loader.
    """
    dim = model.input(0).partial_shape[0]
    batch = dim.get_length() if dim.is_static else None
    if batch is not None:
        datamodule.train_batch_size = datamodule.eval_batch_size = batch
    return batch


def _prepare(model: ov.Model, datamodule: AnomalibDataModule | None, what: str) -> int | None:
    """Set up ``datamodule`` with :func:`match_static_batch`; return the static batch or None."""
    if datamodule is None:
        msg = f"Datamodule must be provided for OpenVINO {what} compression"
        raise ValueError(msg)
    datamodule.setup("fit")
    return match_static_batch(model, datamodule)


def post_training_quantization(model: ov.Model, datamodule: AnomalibDataModule | None = None) -> ov.Model:
    """INT8 PTQ calibrated on the validation images, with :func:`fp32_scope` kept in higher precision.

    Same contract as Anomalib's ``ExportMixin._post_training_quantization_ov``.

    Raises:
        ValueError: If ``datamodule`` is None, or the graph is not MambaADv2's (see :func:`scoring_head`).
    """
    import nncf

    batch = _prepare(model, datamodule, "INT8_PTQ")
    scope = fp32_scope(model)
    calibration = nncf.Dataset(_Batches(datamodule.val_dataloader(), batch), _image_array)
    return nncf.quantize(model, calibration, ignored_scope=scope)


def _validation_loader(datamodule: AnomalibDataModule) -> DataLoader:
    """The validation loader when it holds normal and anomalous images, else the test loader (Anomalib's choice)."""
    samples = getattr(getattr(datamodule, "val_data", None), "samples", None)
    labels = set(samples["label_index"]) if samples is not None and "label_index" in samples else set()
    return datamodule.val_dataloader() if labels >= {0, 1} else datamodule.test_dataloader()


def accuracy_control_quantization(
    model: ov.Model,
    datamodule: AnomalibDataModule | None = None,
    metric: Metric | None = None,
    task: TaskType | None = None,
    max_drop: float = 0.01,
) -> ov.Model:
    """INT8 quantisation that gives ops back to f32 until ``metric`` drops by at most ``max_drop`` (absolute).

    Same contract as Anomalib's ``ExportMixin._accuracy_control_quantization_ov``, with three differences: the scope
    of :func:`post_training_quantization` is the starting point; the metric is reset before every evaluation (NNCF
    evaluates several models; Anomalib's version accumulates them all into one metric); and it is measured on the
    validation split when that has anomalous images (synthetic ones with ``val_split_mode="synthetic"``), so the
    test split stays unseen; otherwise on the test split, as Anomalib does.

    Raises:
        ValueError: If ``datamodule`` is None, ``max_drop`` is outside [0, 1], or the graph is not MambaADv2's.
    """
    import nncf
    import torch
    from anomalib.data import ImageBatch

    del task  # the metric's fields say what it measures
    if not 0 <= max_drop <= 1:
        msg = f"max_drop must be between 0 and 1, got {max_drop}"
        raise ValueError(msg)
    batch = _prepare(model, datamodule, "INT8_ACQ")
    if metric is None:
        from anomalib.metrics import F1Score

        metric = F1Score(fields=["pred_label", "gt_label"])  # Anomalib's default
    scope = fp32_scope(model)

    def validate(compiled: Any, data: Iterable[Any]) -> float:
        metric.reset()
        for item in data:
            result = compiled(item.image.numpy())
            out = {name: torch.from_numpy(result[port]) for port in compiled.outputs for name in port.get_names()}
            fields = {k: out[k] for k in ("anomaly_map", "pred_mask") if k in out}
            fields |= {k: out[k].reshape(-1) for k in ("pred_score", "pred_label") if k in out}
            metric.update(ImageBatch(image=item.image, gt_label=item.gt_label, gt_mask=item.gt_mask, **fields))
        return float(metric.compute())

    calibration = nncf.Dataset(_Batches(datamodule.val_dataloader(), batch), _image_array)
    validation = nncf.Dataset(_Batches(_validation_loader(datamodule), batch), _image_array)
    return nncf.quantize_with_accuracy_control(
        model, calibration, validation, validate, max_drop=max_drop, ignored_scope=scope
    )


class Int8ExportMixin:
    """Before ``AnomalibModule`` in a model's bases: Anomalib's INT8_PTQ / INT8_ACQ export then uses this module.

    ``ExportMixin.to_openvino`` → ``_compress_ov_model`` calls ``self._post_training_quantization_ov`` and
    ``self._accuracy_control_quantization_ov``; these replace Anomalib's.
    """

    _post_training_quantization_ov = staticmethod(post_training_quantization)
    _accuracy_control_quantization_ov = staticmethod(accuracy_control_quantization)
