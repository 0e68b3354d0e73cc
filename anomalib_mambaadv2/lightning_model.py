# SPDX-License-Identifier: Apache-2.0
"""MambaADv2 as an Anomalib model.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_mambaadv2 import MambaADv2
    >>> model = MambaADv2(backbone="resnet34", image_size=256)
    >>> engine = Engine(max_epochs=100)
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

Encoder weights (``pre_trained`` / ``backbone_weights``) are loaded when training starts, not at construction, so a
model rebuilt from a checkpoint for ``test``, ``predict`` or ``export`` takes its frozen encoder from the checkpoint
and never tries to download anything.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRSchedulerConfig

from .category_thresholds import CHECKPOINT_KEY, CategoryThresholds, write_thresholds_file
from .checkpoint import check_checkpoint_file, config_mismatch
from .components.dss import rename_legacy_keys
from .config import MambaADv2Config
from .loss import ReconstructionLoss
from .onnx_graph import optimize_graph
from .per_category import PerCategoryMetrics
from .post_processor import SoftPostProcessor
from .quantize import Int8ExportMixin
from .torch_model import MambaADv2Model, as_pair

_DEFAULT = MambaADv2Config()  # the defaults of the options below (one source: config.py)

logger = logging.getLogger(__name__)

# Parameters that get no weight decay besides biases and norms (MambaAD's recipe; docs/design.md §1.6).
_NO_DECAY_NAMES = ("dt_bias", "a_bias", "B_bias", "C_bias", ".D", "gain", "weight_real", "weight_imag")


class MambaADv2(Int8ExportMixin, AnomalibModule):
    """MambaADv2: a duality-enhanced state-space decoder that reconstructs frozen encoder features.

    INT8 export (``compression_type=INT8_PTQ`` / ``INT8_ACQ``) keeps the anomaly scoring in f32
    (:mod:`anomalib_mambaadv2.quantize`).

    Args:
        backbone: timm backbone of the frozen encoder.
        layers: Three encoder layers, shallow to deep.
        pre_trained: Load timm's pretrained encoder weights when training starts (needs a model hub).
        backbone_weights: Local timm state dict for the encoder (offline alternative to ``pre_trained``).
        image_size: Input size (int or [H, W]); multiples of 32 for ResNets. Sets the default pre-processor.
        depths: HSS blocks per decoder stage, deep to shallow.
        directions: Scan directions per decoder stage (``[8, 8, 8, 8]`` is MambaAD's scanning).
        scan_curve: ``"auto"``, ``"hilbert"``, ``"snake"`` or ``"raster"``.
        d_state: SSM state size N.
        headdim: SSM head dim P.
        expand: HSS inner width factor.
        matrix_path: HSS global matrix path.
        trapezoid: Mamba-3 exponential-trapezoidal discretisation.
        rotation: Mamba-3 data-dependent rotary position.
        freq_branch: Frequency-enhanced branch (else MambaAD's 5×5 branch).
        drop_path_rate: Maximum stochastic depth.
        chunk_size: SSD chunk size (tokens per chunk of the scan).
        sigma: Gaussian blur of the anomaly map in pixels.
        activation_checkpointing: Recompute HSS activations in backward (less training memory, more compute).
        feature_dropout: Dropout on the encoder features entering the bottleneck, training only (noisy bottleneck).
        loss: ``"mse"`` (5·MSE per scale), ``"cosine"`` (RD's) or ``"cosine_hm"`` (Dinomaly's loose loss: one cosine per
            image and scale, gradients of the best-reconstructed 90 % of positions × 0.1; see :mod:`.loss`).
        lr: Learning rate at batch size 16; scaled linearly with the training batch size.
        weight_decay: AdamW weight decay (not applied to biases, norms, SSM scalars and filters).
        ssd_backend: ``"torch"`` (exportable, default), ``"auto"`` or ``"fused"`` (``mamba_ssm`` on NVIDIA GPUs).
        pre_processor: Pre-processor, or True for the default (resize to ``image_size`` + ImageNet normalisation).
        post_processor: Post-processor, or True for the default (:class:`SoftPostProcessor`: Anomalib's without the
            clipping of normalised scores, which ties high scores and lowers AUROC).
        evaluator: Evaluator or flag (default: image AUROC/AUPR/F1Max, pixel AUROC/AUPR/F1Max/AUPRO).
        visualizer: Visualizer or flag.

    Attributes:
        category_thresholds: Per-category raw image/pixel thresholds calibrated on validation with a multi-class
            datamodule (``{category: {"image": t, "pixel": t, ...}}``, None = global fallback; see
            :mod:`anomalib_mambaadv2.category_thresholds`). Saved in checkpoints, written with every export.
    """

    def __init__(
        self,
        backbone: str = _DEFAULT.backbone,
        layers: Sequence[str] = _DEFAULT.layers,
        pre_trained: bool = _DEFAULT.pre_trained,
        backbone_weights: str | None = _DEFAULT.backbone_weights,
        image_size: int | Sequence[int] = 256,
        depths: Sequence[int] = _DEFAULT.depths,
        directions: Sequence[int] = _DEFAULT.directions,
        scan_curve: str = _DEFAULT.scan_curve,
        d_state: int = _DEFAULT.d_state,
        headdim: int = _DEFAULT.headdim,
        expand: int = _DEFAULT.expand,
        matrix_path: bool = _DEFAULT.matrix_path,
        trapezoid: bool = _DEFAULT.trapezoid,
        rotation: bool = _DEFAULT.rotation,
        freq_branch: bool = _DEFAULT.freq_branch,
        drop_path_rate: float = _DEFAULT.drop_path_rate,
        chunk_size: int = _DEFAULT.chunk_size,
        sigma: float = _DEFAULT.sigma,
        activation_checkpointing: bool = _DEFAULT.activation_checkpointing,
        feature_dropout: float = _DEFAULT.feature_dropout,
        loss: str = "mse",
        lr: float = 0.005,
        weight_decay: float = 1e-4,
        ssd_backend: str = _DEFAULT.ssd_backend,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        size = as_pair(image_size)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(size)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.pre_trained, self.backbone_weights = pre_trained, backbone_weights
        self.lr, self.weight_decay = lr, weight_decay
        # Weights are loaded in `setup("fit")`: a checkpoint restore then overwrites them, and test/predict/export
        # from a checkpoint never download.
        self.model = MambaADv2Model(
            MambaADv2Config(
                backbone=backbone,
                layers=tuple(layers),
                pre_trained=False,
                image_size=self.input_size or size,
                depths=tuple(depths),
                directions=tuple(directions),
                scan_curve=scan_curve,
                d_state=d_state,
                headdim=headdim,
                expand=expand,
                matrix_path=matrix_path,
                trapezoid=trapezoid,
                rotation=rotation,
                freq_branch=freq_branch,
                drop_path_rate=drop_path_rate,
                chunk_size=chunk_size,
                ssd_backend=ssd_backend,
                sigma=sigma,
                activation_checkpointing=activation_checkpointing,
                feature_dropout=feature_dropout,
            )
        )
        self.loss = ReconstructionLoss(loss)
        self.category_thresholds: dict[str, dict[str, Any]] = {}

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's component callbacks, per-category thresholds and test metrics (with multi-class datamodules).

        The thresholds callback comes right after the post-processor, so that the evaluator, the visualizer and the
        per-category metrics see the per-category labels.
        """
        callbacks = super().configure_callbacks()
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        after = next((i + 1 for i, c in enumerate(callbacks) if c is self.post_processor), len(callbacks))
        return [*callbacks[:after], CategoryThresholds(), *callbacks[after:], PerCategoryMetrics()]

    def setup(self, stage: str) -> None:
        """Load the encoder's pretrained weights before training (a checkpoint restore comes after and wins)."""
        super().setup(stage)
        self._use_rank_zero_run_folder()
        if stage == "fit":
            self.model.encoder.load_weights(pre_trained=self.pre_trained, backbone_weights=self.backbone_weights)

    def _use_rank_zero_run_folder(self) -> None:
        """Give every DDP rank rank 0's run folder.

        With ``strategy="ddp"`` each rank re-runs the script, so Anomalib's ``Engine`` makes one versioned run folder
        per rank (``v0`` for rank 0, ``v1``… for the others, left empty but for that rank's share of the test images)
        and ``latest`` ends on one of those. Every rank takes rank 0's folder, removes the empty one made for it and
        points ``latest`` at rank 0's (atomically, as several ranks may do it at once).
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size < 2:
            return
        own = Path(trainer.default_root_dir)
        shared = Path(trainer.strategy.broadcast(str(own), src=0))
        if own == shared:
            return
        trainer._default_root_dir = str(shared)  # the Trainer has no setter; callbacks read `default_root_dir`
        if own.is_dir() and own.name[:1] == "v" and own.name[1:].isdigit() and not any(own.iterdir()):
            own.rmdir()
        latest = own.parent / "latest"
        if latest.is_symlink() and shared.parent == own.parent:
            tmp = latest.with_name(f".latest.rank{trainer.global_rank}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(shared, target_is_directory=True)
            os.replace(tmp, latest)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Anomalib's checkpoint content plus the per-category thresholds (plain data)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = {c: dict(entry) for c, entry in self.category_thresholds.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another configuration with the options that differ (before the state dict loads).

        Also restores the per-category thresholds (none in checkpoints from before they existed).

        Raises:
            ValueError: If the checkpoint's tensors do not fit this model.
        """
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("state_dict")
        if isinstance(saved, dict):
            rename_legacy_keys(self, saved)  # keys of checkpoints saved before 2026-12-05
            options = checkpoint.get("hyper_parameters") or {}
            problem = config_mismatch(options, dict(self.hparams), saved, self.state_dict())
            if problem:
                raise ValueError(problem)
        self.category_thresholds = {c: dict(entry) for c, entry in (checkpoint.get(CHECKPOINT_KEY) or {}).items()}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> MambaADv2:  # type: ignore[override]
        """Anomalib's ``load_from_checkpoint`` (``weights_only=True``), after checking the file is complete.

        Raises:
            ValueError: If the file is truncated or corrupt.
        """
        return super().load_from_checkpoint(check_checkpoint_file(checkpoint_path), *args, **kwargs)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruction loss between encoder and decoder features."""
        del args, kwargs
        loss = self.loss(*self.model(batch.image), progress=self._progress())
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, logger=True, sync_dist=True,
            batch_size=len(batch.image),
        )  # fmt: skip
        return {"loss": loss}

    def _progress(self) -> float:
        """Fraction of the trainer's steps done (1 where the total is unknown); the same on every DDP process."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        return self.global_step / total if math.isfinite(total) and total > 0 else 1.0

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Scores and anomaly maps for the validation metrics."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def _param_groups(self) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(_NO_DECAY_NAMES) else decay).append(p)
        return [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """AdamW (lr scaled by the global batch / 16), ×0.1 at 80 % of the trainer's total steps.

        The global batch is the datamodule's (per-process) batch × DDP processes × gradient accumulation, so
        ``--trainer.devices N`` with the same per-device batch keeps the recipe's lr per image.
        """
        batch_size = getattr(getattr(self.trainer, "datamodule", None), "train_batch_size", 16) or 16
        batch_size *= self.trainer.world_size * self.trainer.accumulate_grad_batches
        optimizer = torch.optim.AdamW(self._param_groups(), lr=self.lr * batch_size / 16, betas=(0.9, 0.999))
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            logger.warning("No max_epochs/max_steps set: the learning rate will not be decayed.")
            total = 1 << 62
        milestone = max(int(0.8 * total), 1)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> Path:
        """Export to ONNX at the model's image size (scan orders and filters are fixed per grid), opset 18.

        The graph is optimised by :func:`~anomalib_mambaadv2.onnx_graph.optimize_graph` (the exporter's passes without
        its one slow rewrite rule); ``optimize=True`` asks for the exporter's own optimisation, ``False`` for none.
        Per-category thresholds, if any, go to ``category_thresholds.json`` next to ``model.onnx``.
        """
        kwargs.setdefault("opset_version", 18)
        optimise_here = "optimize" not in kwargs
        kwargs.setdefault("optimize", False)
        path = super().to_onnx(export_root, model_file_name, input_size or tuple(self.model.image_size), **kwargs)
        if optimise_here:
            optimize_graph(path)
        write_thresholds_file(path.parent, self.category_thresholds, self.post_processor)
        return path

    def to_openvino(self, export_root: Path | str, *args, **kwargs) -> Path:
        """Anomalib's OpenVINO export, plus ``category_thresholds.json`` next to ``model.xml`` (multi-class models)."""
        path = super().to_openvino(export_root, *args, **kwargs)
        write_thresholds_file(path.parent, self.category_thresholds, self.post_processor)
        return path

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Anomalib's torch export, plus ``category_thresholds.json`` next to ``model.pt`` (multi-class models)."""
        path = super().to_torch(export_root, model_file_name)
        write_thresholds_file(path.parent, self.category_thresholds, self.post_processor)
        return path

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Gradient-norm clipping at 5; no sanity validation (the decoder is untrained then)."""
        return {"gradient_clip_val": 5.0, "gradient_clip_algorithm": "norm", "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class (normal images only)."""
        return LearningType.ONE_CLASS

    @classmethod
    def configure_post_processor(cls) -> PostProcessor:
        """Anomalib's post-processor with a strictly monotonic normalisation (see :class:`SoftPostProcessor`).

        Anomalib's default clips normalised scores to [0, 1], so every test image above the validation maximum ties
        at 1.0 and AUROC/AUPR come out below the model's own ranking. Pass ``post_processor=PostProcessor()`` for
        Anomalib's behaviour.
        """
        return SoftPostProcessor()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image AUROC/AUPR/F1Max and pixel AUROC/AUPR/F1Max/AUPRO on test; image and pixel AUROC on validation."""
        val_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
        return Evaluator(val_metrics=val_metrics, test_metrics=test_metrics)
