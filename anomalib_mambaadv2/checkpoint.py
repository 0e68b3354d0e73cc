# SPDX-License-Identifier: Apache-2.0
"""Checkpoint checks that turn low-level load failures into messages naming the cause and the fix.

* :func:`check_checkpoint_file`: a truncated or corrupt checkpoint (torch's zip format) is named as such before
  ``torch.load`` reports a missing central directory.
* :func:`config_mismatch`: a checkpoint whose tensors do not fit the model is explained by the options that differ.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .components.weights_file import list_keys

if TYPE_CHECKING:
    from torch import Tensor

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_LISTED = 5


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Check that ``path`` is a complete checkpoint file (CRC of every member of torch's zip archive).

    Files in torch's legacy (non-zip) format are passed through unchecked.

    Args:
        path: Checkpoint path.

    Returns:
        The path.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is truncated or corrupt.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Checkpoint not found: {path}"
        raise FileNotFoundError(msg)
    with path.open("rb") as handle:
        if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return path
    fix = "copy it again, or use another checkpoint of the run (e.g. last.ckpt)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        msg = f"Checkpoint {path} is truncated or corrupt ({exc}): {fix}"
        raise ValueError(msg) from exc
    if bad is not None:
        msg = f"Checkpoint {path} is corrupt (member {bad} fails its CRC check): {fix}"
        raise ValueError(msg)
    return path


def _plain(value: object) -> object:
    """Compare sequences by their items (a YAML list and a tuple default are the same option)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_plain(v) for v in value)
    return value


def config_mismatch(
    saved_options: Mapping[str, object],
    options: Mapping[str, object],
    saved_state: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
) -> str | None:
    """Explain why a checkpoint's tensors do not fit a model, or return ``None`` when they fit.

    Args:
        saved_options: The options (hyper-parameters) stored in the checkpoint.
        options: The options of the model it is loaded into.
        saved_state: The checkpoint's state dict.
        state: The model's state dict.

    Returns:
        A message naming the options that differ and the tensors that do not fit, or ``None``.
    """
    missing = sorted(state.keys() - saved_state.keys())
    unexpected = sorted(saved_state.keys() - state.keys())
    reshaped = sorted(k for k in state.keys() & saved_state.keys() if state[k].shape != saved_state[k].shape)
    if not (missing or unexpected or reshaped):
        return None
    differing = [
        f"{key}={saved_options[key]!r} (this model: {options[key]!r})"
        for key in sorted(saved_options.keys() & options.keys())
        if _plain(saved_options[key]) != _plain(options[key])
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if keys:
            problems.append(f"{len(keys)} tensor(s) {label}: {list_keys(keys, _MAX_LISTED)}")
    cause = f"it was saved with {', '.join(differing)}" if differing else "its stored options match, its tensors do not"
    return (
        f"The checkpoint does not fit this model: {cause}; {'; '.join(problems)}. Build the model with the "
        "checkpoint's options, or load it with MambaADv2.load_from_checkpoint(path), which uses them."
    )
