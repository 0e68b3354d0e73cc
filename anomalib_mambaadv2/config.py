# SPDX-License-Identifier: Apache-2.0
"""Every option of the MambaADv2 network, with its default, in one place.

:class:`~anomalib_mambaadv2.torch_model.MambaADv2Model` takes one :class:`MambaADv2Config`; the Lightning module
:class:`~anomalib_mambaadv2.lightning_model.MambaADv2` lists the same options as arguments (so that ``anomalib train
--model.<option>`` and YAML reach each one) with these defaults, and builds the config from them. Why the defaults
are what they are: ``docs/design.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .components.hss_config import HSSConfig, replace_options
from .components.scanning import DEFAULT_SCHEDULE
from .components.ssd import Backend


@dataclass(frozen=True)
class MambaADv2Config:
    """Options of the MambaADv2 network.

    Attributes:
        backbone: timm ``features_only`` backbone name of the frozen encoder.
        layers: Three encoder layers, shallow to deep (Anomalib's naming ``layer1..3``; timm module names otherwise).
        pre_trained: Load timm's pretrained encoder weights (needs a model hub; see ``backbone_weights``).
        backbone_weights: Path to a local timm state dict for the encoder; wins over ``pre_trained``.
        image_size: Input (H, W), or one int for a square; multiples of twice the deepest encoder stride.
        depths: HSS blocks per decoder stage, deep to shallow (stage 0 at the bottleneck).
        directions: Scan directions per stage (the SAPS schedule; MambaAD scanned 8 everywhere).
        freq_branch: Frequency-enhanced branch in DSS modules (else MambaAD's 5×5 branch).
        drop_path_rate: Maximum stochastic depth rate (linear over the decoder's HSS blocks).
        sigma: Gaussian blur of the anomaly map in pixels.
        feature_dropout: Dropout on the encoder features entering the bottleneck, training only (noisy bottleneck).
        scan_curve: Space-filling curve of the scans (:class:`HSSConfig`).
        d_state: SSM state size N (:class:`HSSConfig`).
        headdim: SSM head dim P (:class:`HSSConfig`).
        expand: HSS inner width factor (:class:`HSSConfig`).
        matrix_path: HSS global matrix path (:class:`HSSConfig`).
        trapezoid: Mamba-3 exponential-trapezoidal discretisation (:class:`HSSConfig`).
        rotation: Mamba-3 data-dependent rotary position (:class:`HSSConfig`).
        chunk_size: SSD chunk size (:class:`HSSConfig`).
        ssd_backend: ``"torch"`` (exportable), ``"fused"`` or ``"auto"`` (:class:`HSSConfig`).
        activation_checkpointing: Recompute each HSS block's activations in backward (:class:`HSSConfig`'s
            ``checkpointing``; training memory for compute).
    """

    backbone: str = "resnet34"
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    pre_trained: bool = True
    backbone_weights: str | None = None
    image_size: int | tuple[int, ...] = (256, 256)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    directions: tuple[int, ...] = DEFAULT_SCHEDULE
    freq_branch: bool = True
    drop_path_rate: float = 0.2
    sigma: float = 4.0
    feature_dropout: float = 0.2
    scan_curve: str = HSSConfig.scan_curve
    d_state: int = HSSConfig.d_state
    headdim: int = HSSConfig.headdim
    expand: int = HSSConfig.expand
    matrix_path: bool = HSSConfig.matrix_path
    trapezoid: bool = HSSConfig.trapezoid
    rotation: bool = HSSConfig.rotation
    chunk_size: int = HSSConfig.chunk_size
    ssd_backend: Backend = HSSConfig.ssd_backend
    activation_checkpointing: bool = HSSConfig.checkpointing

    @classmethod
    def build(cls, config: MambaADv2Config | None = None, **options: Any) -> MambaADv2Config:
        """``config`` (default: the defaults) with ``options`` replaced; an unknown option name is a TypeError."""
        return replace_options(cls, config, options, "MambaADv2")

    def hss(self) -> HSSConfig:
        """The options every HSS block of the decoder gets."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(HSSConfig) if f.name != "checkpointing"}
        return HSSConfig(**shared, checkpointing=self.activation_checkpointing)
