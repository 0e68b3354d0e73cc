# SPDX-License-Identifier: Apache-2.0
"""The ``convolution → norm → activation`` unit of the bottleneck, the DSS local branch and the frequency branch."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def conv_norm_act(
    cin: int,
    cout: int,
    kernel: int = 1,
    stride: int = 1,
    groups: int = 1,
    act: Callable[[], nn.Module] = nn.SiLU,
    norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
) -> list[nn.Module]:
    """``Conv2d (no bias, "same" padding) → norm(cout) → act()`` as a flat list of modules.

    A list rather than a module, so that callers lay the units out in their own ``nn.Sequential`` and keep its
    numbered state-dict keys.

    Args:
        cin: Input channels.
        cout: Output channels.
        kernel: Odd kernel size.
        stride: Convolution stride.
        groups: Convolution groups (``cin`` for a depthwise convolution).
        act: Factory of the activation module.
        norm: Factory of the normalisation module, given the channels (BatchNorm2d; the frequency branch: an affine
            InstanceNorm2d).
    """
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        norm(cout),
        act(),
    ]
