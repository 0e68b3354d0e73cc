# SPDX-License-Identifier: Apache-2.0
"""The options of an HSS block, in one place: every block of a decoder shares them (see ``docs/design.md``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from .ssd import Backend

T = TypeVar("T")


def replace_options(cls: type[T], config: T | None, options: dict[str, Any], what: str) -> T:
    """``config`` (default: ``cls()``) with ``options`` replaced; an unknown option name is a TypeError listing them."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        msg = f"unknown {what} option(s) {unknown}; the options are {names}."
        raise TypeError(msg)
    return dataclasses.replace(config or cls(), **options)


@dataclass(frozen=True)
class HSSConfig:
    """Options of :class:`~anomalib_mambaadv2.components.hss.HSSCore` and its block.

    Attributes:
        d_state: SSM state size N.
        headdim: Preferred SSM head dim P (the largest divisor of the inner width up to it is used).
        expand: Inner width factor (inner width = ``expand × dim``).
        matrix_path: Global matrix path beside the recurrence.
        trapezoid: Mamba-3 exponential-trapezoidal discretisation (else Mamba-2's Euler step).
        rotation: Mamba-3 data-dependent rotary position on half of the state dims.
        scan_curve: ``"auto"`` (Hilbert on square power-of-two grids, else snake), ``"hilbert"``, ``"snake"``,
            ``"raster"``.
        chunk_size: Tokens per chunk of the SSD scan.
        ssd_backend: ``"torch"`` (exportable), ``"fused"`` (``mamba_ssm`` on NVIDIA GPUs) or ``"auto"``.
        checkpointing: Recompute the block's activations in backward instead of keeping them (less memory).
    """

    d_state: int = 16
    headdim: int = 64
    expand: int = 2
    matrix_path: bool = True
    trapezoid: bool = True
    rotation: bool = True
    scan_curve: str = "auto"
    chunk_size: int = 32
    ssd_backend: Backend = "torch"
    checkpointing: bool = False

    @classmethod
    def build(cls, config: HSSConfig | None = None, **options: Any) -> HSSConfig:
        """``config`` (default: the defaults) with ``options`` replaced; an unknown option name is a TypeError."""
        return replace_options(cls, config, options, "HSS")
