# SPDX-License-Identifier: Apache-2.0
"""Duality-enhanced State Space (DSS) module.

``[cascade of HSS blocks ∥ 7×7 depthwise local branch ∥ frequency-enhanced branch] → 1×1 fuse → + input``.
MambaAD's LSS module had a 5×5 convolution branch where MambaADv2 has the frequency branch; ``freq_branch=False``
gives that 5×5 branch back, for ablation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .conv_norm_act import conv_norm_act
from .freq_conv import FrequencyEnhancedConv, rename_legacy_frequency_keys
from .hss import HSSBlock
from .hss_config import HSSConfig


class LocalConv(nn.Sequential):
    """``1×1 conv → BN → SiLU → k×k depthwise conv → BN → SiLU → 1×1 conv → BN → SiLU`` at ``hidden`` width.

    The DSS module's local convolution branch (and, with ``k = 5``, MambaAD's branch that the frequency branch
    replaces). This project's form: a half-width bottleneck with BatchNorm; MambaAD's branch runs at full width with
    InstanceNorm.

    Args:
        channels: Input and output channels.
        kernel_size: Depthwise kernel size.
        hidden: Hidden channels (default ``channels // 2``).
    """

    def __init__(self, channels: int, kernel_size: int, hidden: int | None = None) -> None:
        hidden = hidden or max(channels // 2, 1)
        super().__init__(
            *conv_norm_act(channels, hidden),
            *conv_norm_act(hidden, hidden, kernel_size, groups=hidden),
            *conv_norm_act(hidden, channels),
        )


class DSSModule(nn.Module):
    """A cascade of HSS blocks in parallel with a local and a frequency (or 5×5) convolution branch.

    Args:
        dim: Channels of the channels-last token grid.
        grid_size: (H, W) of the grid at the configured image size (sizes the frequency filter; the HSS blocks make
            their scan indices for it once).
        block_directions: Scan directions of each HSS block; its length is the number of blocks.
        drop_paths: Stochastic depth rate of each HSS block.
        freq_branch: Frequency-enhanced branch (True) or MambaAD's 5×5 depthwise branch (False).
        config: Options of every HSS block (:class:`~anomalib_mambaadv2.components.hss_config.HSSConfig`).
        **options: :class:`~anomalib_mambaadv2.components.hss_config.HSSConfig` fields to replace in ``config``.
    """

    def __init__(
        self,
        dim: int,
        grid_size: tuple[int, int],
        block_directions: Sequence[Sequence[int]],
        drop_paths: Sequence[float],
        freq_branch: bool = True,
        config: HSSConfig | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        config = HSSConfig.build(config, **options)
        self.blocks = nn.Sequential(
            *(HSSBlock(dim, dp, dirs, config, grid_size) for dirs, dp in zip(block_directions, drop_paths, strict=True))
        )
        self.local = LocalConv(dim, 7)
        # the frequency-enhanced branch, or MambaAD's 5×5 branch in its place (ablation)
        self.frequency = (
            FrequencyEnhancedConv(dim, grid_size, hidden=max(dim // 2, 1)) if freq_branch else LocalConv(dim, 5)
        )
        self.fuse = nn.Conv2d(3 * dim, dim, 1)
        self.register_load_state_dict_pre_hook(_rename_second_branch)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        grid = x.permute(0, 3, 1, 2)
        mixed = torch.cat((self.blocks(x).permute(0, 3, 1, 2), self.local(grid), self.frequency(grid)), dim=1)
        return x + self.fuse(mixed).permute(0, 2, 3, 1)


def rename_legacy_keys(model: nn.Module, state_dict: dict) -> None:
    """Rename, in place, old keys of ``model``'s DSS modules in ``state_dict``, as their load pre-hooks would.

    Checkpoints saved before 2026-12-04 call the frequency branch ``second``, and before 2026-12-05 its layers had
    other names; checks that compare keys before loading need the new names. Parents come before their children in
    ``named_modules``, so the branch is renamed before its layers.
    """
    for name, module in model.named_modules():
        if isinstance(module, DSSModule):
            _rename_second_branch(module, state_dict, f"{name}.")
        elif isinstance(module, FrequencyEnhancedConv):
            rename_legacy_frequency_keys(module, state_dict, f"{name}.")


def _rename_second_branch(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: a DSS module's old ``second.*`` keys load as ``frequency.*``."""
    old = prefix + "second."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "frequency." + key.removeprefix(old)] = state_dict.pop(key)
