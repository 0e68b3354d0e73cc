# SPDX-License-Identifier: Apache-2.0
"""MambaADv2 as a plain PyTorch module: frozen encoder → bottleneck → DSS decoder → anomaly map.

Usable without Lightning::

    model = MambaADv2Model(backbone="resnet34", pre_trained=False, image_size=(256, 256))
    enc, dec = model(images)           # train mode: features for the loss
    model.eval(); out = model(images)  # eval mode: InferenceBatch(pred_score (B, 1), anomaly_map (B, 1, H, W))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import InferenceBatch
from torch import Tensor, nn

from .anomaly_map import AnomalyMapGenerator
from .components.bottleneck import Bottleneck, PatchExpand
from .components.dss import DSSModule
from .components.encoder import FrozenEncoder
from .components.scanning import saps_directions
from .components.ssd import is_tracing
from .config import MambaADv2Config


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
        config: Network options (:class:`~anomalib_mambaadv2.config.MambaADv2Config`; default: its defaults).
        **options: :class:`~anomalib_mambaadv2.config.MambaADv2Config` fields to replace in ``config``, e.g.
            ``MambaADv2Model(backbone="resnet18", pre_trained=False, image_size=(128, 128))``.
    """

    def __init__(self, config: MambaADv2Config | None = None, **options: Any) -> None:
        super().__init__()
        self.config = c = MambaADv2Config.build(config, **options)
        if len(c.layers) != 3:
            msg = f"MambaADv2 uses three encoder layers (shallow to deep), got {list(c.layers)}."
            raise ValueError(msg)
        if len(c.depths) != 4 or len(c.directions) != 4:
            msg = (
                f"`depths` and `directions` need one entry per decoder stage (4): {list(c.depths)}, "
                f"{list(c.directions)}."
            )
            raise ValueError(msg)
        self.encoder = FrozenEncoder(
            c.backbone, c.layers, pre_trained=c.pre_trained, backbone_weights=c.backbone_weights
        )
        channels, reductions = list(self.encoder.channels), list(self.encoder.reductions)
        self.image_size = validate_image_size(c.image_size, 2 * reductions[-1])

        # Decoder widths follow the encoder: stage 0 at the bottleneck (2 × deepest), then one stage per level.
        widths = [2 * channels[-1], channels[2], channels[1], channels[0]]
        stride0 = 2 * reductions[-1]
        grids = [(self.image_size[0] * 2**i // stride0, self.image_size[1] * 2**i // stride0) for i in range(4)]
        self.bottleneck = Bottleneck(channels, reductions, out_channels=widths[0], feature_dropout=c.feature_dropout)

        total = sum(c.depths)
        rates = torch.linspace(0, c.drop_path_rate, total).tolist()
        hss = c.hss()
        stages, seen = [], 0
        for s, (depth, k) in enumerate(zip(c.depths, c.directions, strict=True)):
            modules, j = [], 0
            for n_blocks in dss_grouping(depth):
                dirs = [saps_directions(k, j + i) for i in range(n_blocks)]
                modules.append(DSSModule(widths[s], grids[s], dirs, rates[seen : seen + n_blocks], c.freq_branch, hss))
                j, seen = j + n_blocks, seen + n_blocks
            expand_layer = PatchExpand(widths[s - 1], widths[s]) if s > 0 else None
            stages.append(DecoderStage(expand_layer, modules))
        self.stages = nn.ModuleList(stages)
        self.anomaly_map = AnomalyMapGenerator(c.sigma)

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
