# SPDX-License-Identifier: Apache-2.0
"""MambaADv2 as a plain PyTorch module: frozen encoder → bottleneck → DSS decoder → anomaly map.

Usable without Lightning::

    model = MambaADv2Model(backbone="resnet34", pre_trained=False, image_size=(256, 256))
    enc, dec = model(images)           # train mode: features for the loss
    model.eval(); out = model(images)  # eval mode: InferenceBatch(pred_score (B, 1), anomaly_map (B, 1, H, W))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from torch import Tensor, nn

from .anomaly_map import AnomalyMapGenerator
from .components.bottleneck import Bottleneck, PatchExpand
from .components.dss import DSSModule
from .components.encoder import FrozenEncoder
from .components.scanning import DEFAULT_SCHEDULE, saps_directions
from .components.ssd import is_tracing


def dss_grouping(depth: int) -> list[int]:
    """Split a stage depth into DSS modules as MambaAD does: 3 HSS per module if ``depth % 3 == 0``, else 2."""
    per = 3 if depth % 3 == 0 else 2
    groups = [per] * (depth // per)
    if depth % per:
        groups.append(depth % per)
    return groups


class DecoderStage(nn.Module):
    """Optional PatchExpand ×2 followed by the stage's DSS modules (channels-last)."""

    def __init__(self, expand: PatchExpand | None, modules: Sequence[DSSModule]) -> None:
        super().__init__()
        self.expand = expand if expand is not None else nn.Identity()
        self.dss = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C_in) → (B, H', W', C)."""
        return self.dss(self.expand(x))


class MambaADv2Model(nn.Module):
    """MambaADv2 network.

    Args:
        backbone: timm ``features_only`` backbone name.
        layers: Three encoder layers, shallow to deep (Anomalib's naming: ``layer1..3``; timm module names otherwise).
        pre_trained: Load timm's pretrained encoder weights (needs a model hub; see ``backbone_weights``).
        backbone_weights: Path to a local timm state dict for the encoder; wins over ``pre_trained``.
        image_size: Input (H, W); both must be multiples of twice the deepest encoder stride (32 for ResNets).
        depths: HSS blocks per decoder stage, deep to shallow (stage 0 at the bottleneck).
        directions: Scan directions per stage (SAPS schedule; MambaAD used 8 everywhere).
        scan_curve: ``"auto"`` (Hilbert on square power-of-two grids, else snake), ``"hilbert"``, ``"snake"``,
            ``"raster"``.
        d_state: SSM state size N.
        headdim: SSM head dim P.
        expand: HSS inner width factor.
        matrix_path: HSS global matrix path.
        trapezoid: Mamba-3 exponential-trapezoidal discretisation.
        rotation: Mamba-3 data-dependent rotary position.
        freq_branch: Frequency-enhanced branch in DSS modules (else MambaAD's 5×5 branch).
        drop_path_rate: Maximum stochastic depth rate (linear over the decoder's HSS blocks).
        chunk_size: SSD chunk size.
        ssd_backend: ``"torch"`` (default, exportable), ``"fused"`` or ``"auto"``.
        sigma: Gaussian blur of the anomaly map in pixels.
        activation_checkpointing: Recompute each HSS block's activations in backward instead of keeping them
            (training memory for compute; off by default).
        feature_dropout: Dropout on the encoder features entering the bottleneck, training only (noisy bottleneck).
    """

    def __init__(
        self,
        backbone: str = "resnet34",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        image_size: Sequence[int] = (256, 256),
        depths: Sequence[int] = (3, 4, 6, 3),
        directions: Sequence[int] = DEFAULT_SCHEDULE,
        scan_curve: str = "auto",
        d_state: int = 16,
        headdim: int = 64,
        expand: int = 2,
        matrix_path: bool = True,
        trapezoid: bool = True,
        rotation: bool = True,
        freq_branch: bool = True,
        drop_path_rate: float = 0.2,
        chunk_size: int = 32,
        ssd_backend: str = "torch",
        sigma: float = 4.0,
        activation_checkpointing: bool = False,
        feature_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != 3:
            msg = f"MambaADv2 uses three encoder layers (shallow to deep), got {list(layers)}."
            raise ValueError(msg)
        if len(depths) != 4 or len(directions) != 4:
            msg = f"`depths` and `directions` need one entry per decoder stage (4): {list(depths)}, {list(directions)}."
            raise ValueError(msg)
        self.encoder = FrozenEncoder(backbone, layers, pre_trained=pre_trained, backbone_weights=backbone_weights)
        channels, reductions = list(self.encoder.channels), list(self.encoder.reductions)
        self.image_size = validate_image_size(image_size, 2 * reductions[-1])

        # Decoder widths follow the encoder: stage 0 at the bottleneck (2 × deepest), then one stage per level.
        widths = [2 * channels[-1], channels[2], channels[1], channels[0]]
        stride0 = 2 * reductions[-1]
        grids = [(self.image_size[0] * 2**i // stride0, self.image_size[1] * 2**i // stride0) for i in range(4)]
        self.bottleneck = Bottleneck(channels, reductions, out_channels=widths[0], feature_dropout=feature_dropout)

        total = sum(depths)
        rates = torch.linspace(0, drop_path_rate, total).tolist()
        hss_kwargs = {
            "d_state": d_state, "headdim": headdim, "expand": expand, "matrix_path": matrix_path,
            "trapezoid": trapezoid, "rotation": rotation, "scan_curve": scan_curve, "chunk_size": chunk_size,
            "ssd_backend": ssd_backend, "checkpointing": activation_checkpointing,
        }  # fmt: skip
        stages, seen = [], 0
        for s, (depth, k) in enumerate(zip(depths, directions, strict=True)):
            modules, j = [], 0
            for n_blocks in dss_grouping(depth):
                dirs = [saps_directions(k, j + i) for i in range(n_blocks)]
                modules.append(
                    DSSModule(widths[s], grids[s], dirs, rates[seen : seen + n_blocks], freq_branch, **hss_kwargs)
                )
                j, seen = j + n_blocks, seen + n_blocks
            expand_layer = PatchExpand(widths[s - 1], widths[s]) if s > 0 else None
            stages.append(DecoderStage(expand_layer, modules))
        self.stages = nn.ModuleList(stages)
        self.anomaly_map = AnomalyMapGenerator(sigma)

    def decode(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Encoder features (shallow to deep) → reconstructed features at the same scales (shallow to deep)."""
        x = self.bottleneck(feats).permute(0, 2, 3, 1)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i > 0:
                outs.append(x.permute(0, 3, 1, 2))
        return outs[::-1]

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]] | InferenceBatch:
        """Train mode: (encoder features, decoder features). Eval mode: ``InferenceBatch(pred_score, anomaly_map)``."""
        if images.ndim != 4 or images.shape[1] != 3:
            msg = f"MambaADv2 expects RGB images shaped (B, 3, H, W), got {tuple(images.shape)}; convert to RGB first."
            raise ValueError(msg)
        if not is_tracing():  # data-dependent checks stay out of exported graphs
            validate_image_size(tuple(images.shape[-2:]), 2 * self.encoder.reductions[-1])
            if not bool(torch.isfinite(images).all()):
                msg = "the input images contain NaN or infinite pixel values; replace them before inference."
                raise ValueError(msg)
        feats = self.encoder(images)
        dec = self.decode(feats)
        if self.training:
            return feats, dec
        amap = self.anomaly_map(feats, dec, tuple(images.shape[-2:]))
        return InferenceBatch(pred_score=torch.amax(amap, dim=(-2, -1)), anomaly_map=amap)


def as_pair(image_size: int | Sequence[int]) -> tuple[int, ...]:
    """``image_size`` as (H, W): an int means a square."""
    return (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)


def validate_image_size(image_size: int | Sequence[int], multiple: int) -> tuple[int, int]:
    """Return (H, W) or raise a ValueError naming valid sizes (multiples of ``multiple``, at least ``2·multiple``)."""
    size = as_pair(image_size)
    if len(size) != 2 or any(s < 2 * multiple or s % multiple for s in size):
        examples = ", ".join(str(multiple * k) for k in (4, 7, 8, 9))
        msg = (
            f"image_size {image_size} is not supported: height and width must be multiples of {multiple} and at "
            f"least {2 * multiple} (the decoder halves the deepest encoder grid once more), e.g. {examples}."
        )
        raise ValueError(msg)
    return size
