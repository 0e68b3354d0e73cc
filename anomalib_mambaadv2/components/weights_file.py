# SPDX-License-Identifier: Apache-2.0
"""Local encoder weights files: loading (``weights_only``), key matching, and naming the backbone they belong to."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

# Wrappers that training scripts put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model", "module")
_MAX_LISTED_KEYS = 10


def list_keys(keys: Sequence[str] | set[str], limit: int = _MAX_LISTED_KEYS) -> str:
    """Format the first ``limit`` of ``keys`` (sorted) for an error message."""
    keys = sorted(keys)
    listed = ", ".join(keys[:limit])
    if len(keys) > limit:
        listed += f", ... ({len(keys) - limit} more)"
    return listed


def load_timm_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a timm-format state dict from a local file.

    ``.safetensors`` files are read with ``safetensors`` (if installed); anything else with
    ``torch.load(weights_only=True)``. Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``)
    are unwrapped and a DataParallel ``module.`` prefix is stripped.

    Args:
        path: Path to the weights file.

    Returns:
        Mapping from parameter/buffer name to tensor, on CPU.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ImportError: If a ``.safetensors`` file is given and ``safetensors`` is not installed.
        ValueError: If the file is truncated or corrupt, holds other objects than tensors, or no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Backbone weights file not found: {path}"
        raise FileNotFoundError(msg)

    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # optional dependency
        except ImportError as exc:
            msg = f"Reading {path} needs the `safetensors` package: pip install safetensors"
            raise ImportError(msg) from exc
        state_dict: object = load_file(str(path), device="cpu")
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refuses anything that is not tensors and plain data
            msg = (
                f"{path} holds pickled objects besides tensors, which are never unpickled here (weights_only=True, "
                "so no code from the file runs). Save the weights alone: torch.save(model.state_dict(), path)"
            )
            raise ValueError(msg) from exc
        except (RuntimeError, EOFError) as exc:  # torch's messages: "failed finding central directory", ...
            msg = f"{path} is truncated or corrupt, not a complete torch file ({exc}): copy or save it again"
            raise ValueError(msg) from exc

    # Unwrap training checkpoints until we reach the tensors themselves.
    while isinstance(state_dict, Mapping) and not any(isinstance(v, Tensor) for v in state_dict.values()):
        inner = next((state_dict[k] for k in _WRAPPER_KEYS if isinstance(state_dict.get(k), Mapping)), None)
        if inner is None:
            break
        state_dict = inner

    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()
    ):
        msg = f"{path} does not contain a state dict (a mapping of parameter names to tensors)"
        raise ValueError(msg)

    state_dict = dict(state_dict)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def build_on_meta(backbone: str, **kwargs: object) -> nn.Module:
    """Build a timm model without allocating or initialising weights (for reading its structure only)."""
    try:
        with torch.device("meta"):
            return timm.create_model(backbone, pretrained=False, **kwargs)
    except Exception:  # a few models compute values at init time; build them for real instead
        return timm.create_model(backbone, pretrained=False, **kwargs)


def feature_to_full_keys(feature_keys: Sequence[str], full_keys: set[str]) -> dict[str, str]:
    """Map state-dict keys of a timm ``features_only`` model to those of the full classifier model.

    timm's feature wrappers rename some modules: ``FeatureListNet`` flattens sequentials (``stages.0`` becomes
    ``stages_0``) and ``FeatureGetterNet`` nests the model under ``model.``. Keys without a counterpart map to
    themselves.
    """
    mapping = {}
    for key in feature_keys:
        candidates = [key, key.removeprefix("model.")]
        for cand in list(candidates):
            head, _, rest = cand.partition(".")
            # Try each underscore of the top-level name as a flattened "." (``features_denseblock1``).
            candidates += [f"{head[:i]}.{head[i + 1 :]}.{rest}" for i, c in enumerate(head) if c == "_" and rest]
        mapping[key] = next((c for c in candidates if c in full_keys), key)
    return mapping


def _family(backbone: str) -> str:
    """The architecture family of a timm name: the part before its first digit (``wide_resnet``, ``efficientnet``)."""
    return next((backbone[:i] for i, c in enumerate(backbone) if c.isdigit()), backbone)


def identify_backbone(state_dict: Mapping[str, Tensor], candidates: Sequence[str]) -> str | None:
    """Name the timm backbone (among ``candidates``) whose full-model tensors match ``state_dict``'s.

    For error messages only: candidates are built on the meta device (no weights allocated). A candidate matches
    when every tensor both share has the same shape and they share at least 95 % of each one's tensors.

    Args:
        state_dict: Weights of unknown origin.
        candidates: timm model names to try, in order.

    Returns:
        The first matching name, or ``None``.
    """
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    for name in candidates:
        try:
            reference = {
                k: tuple(v.shape) for k, v in build_on_meta(name).state_dict().items() if not k.endswith("tracked")
            }
        except Exception:  # a candidate that cannot be built is not the answer
            continue
        shared = shapes.keys() & reference.keys()
        if (
            shared
            and all(shapes[k] == reference[k] for k in shared)
            and len(shared) >= 0.95 * max(len(shapes), len(reference))
        ):
            return name
    return None


def backbone_candidates(backbone: str) -> list[str]:
    """Names to try when weights do not fit ``backbone``: the usual anomaly-detection encoders, then its family."""
    usual = ["resnet18", "resnet34", "resnet50", "wide_resnet50_2", "tf_efficientnet_lite0", "efficientnet_b0"]
    family = timm.list_models(f"{_family(backbone)}*")
    return [m for m in dict.fromkeys([*usual, *family]) if m != backbone]
