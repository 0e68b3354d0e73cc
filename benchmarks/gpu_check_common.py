# SPDX-License-Identifier: Apache-2.0
"""Shared parts of ``benchmarks/gpu_check.py``: sizes, tolerances, the report, and loading ``mamba_ssm``."""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from dataclasses import dataclass, field

import torch

from anomalib_mambaadv2.components.hss_config import HSSConfig
from anomalib_mambaadv2.components.ssd import fused_available

# the model's defaults (HSSConfig): head dim P, state N, chunk; half of the state dims rotate in pairs
HEADDIM, STATE, CHUNK = HSSConfig.headdim, HSSConfig.d_state, HSSConfig.chunk_size
PAIRS = STATE // 4  # rotated pairs, as in the model (HSSCore.npairs)

TOL_F32 = 1e-3  # forward, float32 inputs: max |fused - torch| / max |torch|
TOL_BF16 = 2e-2  # forward, bf16 inputs: against the float32 pure-PyTorch output on the same bf16-rounded inputs
TOL_GRAD_F32 = 1e-2  # input gradients, float32, worst input tensor
TOL_GRAD_BF16 = 5e-2  # input gradients, bf16 inputs, worst input tensor
TOL_F64 = 1e-9  # float64 sanity row: chunked ssd against the token loop


@dataclass(frozen=True)
class Config:
    """Sizes of one run (full on a GPU, reduced with ``--quick`` or on CPU)."""

    stages: tuple[tuple[int, int], ...]  # (stage width C, sequence length L); heads = 2C / HEADDIM
    batch: int
    image: int
    backbone: str
    depths: tuple[int, int, int, int]
    model_batch: int
    warmup: int
    repeat: int
    budget_s: float  # at most this long per timed series (fewer calls for slow ones)


FULL = Config(
    stages=((512, 64), (256, 256), (128, 1024), (64, 4096)),
    batch=16,
    image=256,
    backbone="resnet34",
    depths=(3, 4, 6, 3),
    model_batch=16,
    warmup=3,
    repeat=10,
    budget_s=20.0,
)

QUICK = Config(
    stages=((512, 64), (256, 256)),
    batch=2,
    image=64,
    backbone="resnet18",
    depths=(1, 2, 2, 1),
    model_batch=2,
    warmup=1,
    repeat=3,
    budget_s=2.0,
)

SANITY = {"batch": 2, "length": 256, "heads": 16}


@dataclass
class Report:
    """Markdown lines and the failures found so far."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def short_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(text: str) -> str:
    """Text safe for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class FusedStatus:
    """Whether the fused path can run here, and the notes for the environment table."""

    available: bool
    reason: str  # why not, when unavailable
    mamba: str  # mamba_ssm import status for the report


def _purge(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def import_mamba(bare_import: bool) -> tuple[bool, str]:
    """Import ``mamba_ssm`` (or, failing that and allowed, only its Triton SSD kernels). Returns (usable, note)."""
    try:
        version = importlib.metadata.version("mamba_ssm")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        mod = importlib.import_module("mamba_ssm")
        importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    except Exception as exc:
        error = short_error(exc)
    else:
        return True, f"imports, version {getattr(mod, '__version__', version)}"
    spec = importlib.util.find_spec("mamba_ssm") if version is not None else None
    if not bare_import or spec is None or not spec.submodule_search_locations:
        return False, f"not importable ({error})"
    # The package __init__ pulls in Mamba-1's CUDA extension and transformers; the SSD kernels need neither.
    _purge("mamba_ssm")
    bare = types.ModuleType("mamba_ssm")
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__file__ = spec.origin
    bare.__version__ = version
    sys.modules["mamba_ssm"] = bare
    try:
        importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    except Exception as exc2:
        _purge("mamba_ssm")
        return False, f"not importable ({error}; its Triton kernels alone: {short_error(exc2)})"
    return True, (
        f"version {version}: `import mamba_ssm` fails ({error}); its Triton SSD kernels were loaded without the "
        "package `__init__` (a workaround of this script, `--no-bare-import` turns it off: a plain process needs "
        "`import mamba_ssm` to work for `ssd_backend='fused'`)"
    )


def fused_status(device: torch.device, bare_import: bool) -> FusedStatus:
    usable, note = import_mamba(bare_import)
    if device.type != "cuda":
        why = "no CUDA device" if not torch.cuda.is_available() else "--device cpu"
        return FusedStatus(False, why, note)
    if not usable:
        return FusedStatus(False, f"mamba_ssm {note}", note)
    if not fused_available():
        return FusedStatus(False, "fused_available() is False", note)
    return FusedStatus(True, "", note)
