# SPDX-License-Identifier: Apache-2.0
"""GPU check: parity and speed of the fused ``mamba_ssm`` SSD path against the pure-PyTorch one, and model throughput.

Writes a markdown report to ``--out`` and prints it. Sections:

1. Environment: Python, torch (and its CUDA), device, Triton, whether ``mamba_ssm`` imports (and its version).
2. Parity: ``ssd(backend="torch")`` against ``ssd(backend="fused")`` at the decoder's stage sizes (stage width C =
   512/256/128/64 → inner 2C, heads 2C/32, head dim 32, state 32, L = 64/256/1024/4096, batch 16) for the Mamba-2 case
   (``lam = omega = None``) and trapezoid + rotation, with float32 and bf16 inputs (bf16: the fused output against
   the float32 pure-PyTorch output on the same bf16-rounded inputs), forward and input gradients. Plus a float64
   sanity row: ``ssd`` against the token loop ``ssd_reference`` (L=256, batch 2). Tolerances are in the report.
3. Speed of both paths, forward and forward+backward, median of several synchronised calls, bf16 inputs,
   trapezoid + rotation (as the model calls it under bf16 autocast).
4. The full model (resnet34 encoder, ``pre_trained=False``, 256×256, batch 16, bf16 autocast), ``ssd_backend="torch"``
   against ``"fused"``: training step (forward + loss + backward + AdamW step) and inference throughput, peak memory.

Without CUDA or without ``mamba_ssm`` every fused part reads "unavailable (reason)"; with ``--device cpu`` (or when
there is no CUDA) the pure-PyTorch parts run at the ``--quick`` sizes (L ≤ 256, batch 2, 64×64 images, resnet18,
decoder depths (1, 2, 2, 1)). Exit code 0 when every check that could run passed, 1 when a parity check failed or a
measurement raised an error.

On a GPU machine without internet: build the ``mamba_ssm`` wheel where there is internet (it is pure Python when
the CUDA extensions are skipped; ``--no-build-isolation`` because its ``setup.py`` imports torch)::

    MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \\
        pip download --no-deps --no-binary :all: --no-build-isolation mamba-ssm==2.3.2.post1 -d wheels
    MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \\
        pip wheel --no-deps --no-build-isolation wheels/mamba_ssm-2.3.2.post1.tar.gz -w wheels

then, on the GPU machine (torch with CUDA and Triton already installed, as in ``.venv``)::

    pip install --no-build-isolation --no-deps wheels/mamba_ssm-*.whl
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --out gpu_check.md     # target ≤ 8 min on an H100/H200
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --quick --out q.md     # smoke run, reduced sizes

The report's summary gives each section's seconds. CPU smoke run (as the test does)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out gpu_check_cpu.md

``mamba_ssm`` 2.3.2.post1's package ``__init__`` imports the Mamba-1 CUDA extension ``selective_scan_cuda`` (absent
when built with ``MAMBA_SKIP_CUDA_BUILD``) and ``transformers``; where ``import mamba_ssm`` fails for such a reason
this script loads ``mamba_ssm.ops.triton.ssd_combined`` without running the package ``__init__`` and says so in the
report (``--no-bare-import`` turns that off). The Triton kernels multiply float32 tiles in TF32 unless
``TRITON_F32_DEFAULT=ieee`` is set; the report's "vs float64" columns show which path carries the error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from benchinfo import git_commit
from torch import Tensor

from anomalib_mambaadv2.components.ssd import fused_available
from anomalib_mambaadv2.components.ssd_reference import ssd, ssd_reference

HEADDIM = 32
STATE = 32
PAIRS = STATE // 4  # rotated pairs, as in the model (HSSCore.npairs)
CHUNK = 64

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


# --------------------------------------------------------------------------------------------------------------------
# 1. Environment and fused-path availability
# --------------------------------------------------------------------------------------------------------------------
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


def environment(report: Report, device: torch.device, status: FusedStatus, cfg: Config, quick: bool) -> None:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        dev = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    try:
        import triton

        triton_v = triton.__version__
    except Exception as exc:
        triton_v = f"not importable ({short_error(exc)})"
    fused = "available" if status.available else f"unavailable ({status.reason})"
    rows = [
        ("commit", git_commit()),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda else torch.__version__),
        ("device", dev),
        ("triton", triton_v),
        ("mamba_ssm", status.mamba),
        ("fused SSD path", fused),
        ("TRITON_F32_DEFAULT", os.environ.get("TRITON_F32_DEFAULT", "unset (float32 tl.dot in TF32)")),
        ("torch float32 matmul precision", torch.get_float32_matmul_precision()),
        ("sizes", "quick (reduced)" if quick else "full"),
        ("SSD stages (C, L)", ", ".join(f"({c}, {length})" for c, length in cfg.stages) + f"; batch {cfg.batch}"),
    ]
    report.add("## 1. Environment", "", "| item | value |", "|:---|:---|")
    report.add(*(f"| {k} | {cell(v)} |" for k, v in rows))
    report.add("")


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------
def make_inputs(batch: int, length: int, heads: int, rotation: bool, seed: int) -> dict[str, Tensor | None]:
    """Model-like float32 inputs on the CPU: Δ from the Mamba-2 init range, A in [-16, -1], B, C per head.

    ``lam``/``omega`` are set when ``rotation`` (trapezoid + rotation), else None (Mamba-2).
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    b, l, h = batch, length, heads
    dt0 = torch.exp(torch.rand(h, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))
    a_bias = torch.log(torch.expm1(torch.empty(h).uniform_(1.0, 16.0, generator=gen)))

    def rms(v: Tensor) -> Tensor:
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)

    return {
        "x": randn(b, l, h, HEADDIM),
        "dt": F.softplus(0.5 * randn(b, l, h) + dt_bias),
        "A": -F.softplus(0.5 * randn(b, l, h) + a_bias).clamp_min(1e-4),
        "B": rms(randn(b, l, 1, STATE)) + 1.0 + 0.1 * randn(h, STATE),
        "C": rms(randn(b, l, 1, STATE)) + 1.0 + 0.1 * randn(h, STATE),
        "lam": torch.sigmoid(randn(b, l, h)) if rotation else None,
        "omega": math.pi * torch.tanh(randn(b, l, PAIRS)) if rotation else None,
    }


def cast(inputs: dict[str, Tensor | None], device: torch.device, dtype: torch.dtype) -> dict[str, Tensor | None]:
    return {k: None if v is None else v.to(device=device, dtype=dtype).contiguous() for k, v in inputs.items()}


def leaves(inputs: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    return {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}


def rel_diff(out: Tensor, ref: Tensor) -> tuple[float, float]:
    """(max |out - ref|, that divided by max |ref|), in float64."""
    out, ref = out.detach().double(), ref.detach().double()
    abs_diff = (out - ref).abs().max().item()
    return abs_diff, abs_diff / max(ref.abs().max().item(), 1e-30)


def grads(inputs: dict[str, Tensor | None], backend: str, upstream: Tensor) -> dict[str, Tensor]:
    """Gradients of ``<ssd(inputs), upstream>`` with respect to every input tensor."""
    named = {k: v for k, v in inputs.items() if v is not None}
    y = ssd(**inputs, chunk_size=CHUNK, backend=backend)
    got = torch.autograd.grad(y, list(named.values()), upstream.to(y.dtype))
    return dict(zip(named, got, strict=True))


# --------------------------------------------------------------------------------------------------------------------
# 2. Parity
# --------------------------------------------------------------------------------------------------------------------
PARITY_HEADER = (
    "| check | case | inputs | L | heads | batch | max abs diff | max rel diff | tolerance (rel) | result "
    "| torch vs float64 | fused vs float64 |",
    "|:---|:---|:---|---:|---:|---:|---:|---:|---:|:---|---:|---:|",
)
CASES = {"mamba2": False, "trapezoid+rotation": True}
DTYPES = ((torch.float32, TOL_F32, TOL_GRAD_F32), (torch.bfloat16, TOL_BF16, TOL_GRAD_BF16))


def verdict(report: Report, ok: bool, what: str) -> str:
    if not ok:
        report.failures.append(what)
    return "PASS" if ok else "**FAIL**"


def sanity_rows(report: Report, device: torch.device) -> None:
    b, l, h = SANITY["batch"], SANITY["length"], SANITY["heads"]
    for case, rot in CASES.items():
        what = f"float64 torch vs ssd_reference, {case}"
        try:
            inp = cast(make_inputs(b, l, h, rot, seed=7), device, torch.float64)
            with torch.no_grad():
                y = ssd(**inp, chunk_size=CHUNK, backend="torch")
                ref = ssd_reference(**inp)
            abs_d, rel_d = rel_diff(y, ref)
            result = verdict(report, rel_d <= TOL_F64, what)
            cells = f"{abs_d:.2e} | {rel_d:.2e} | {TOL_F64:.0e} | {result}"
        except Exception as exc:
            report.failures.append(f"{what}: {short_error(exc)}")
            cells = f"— | — | {TOL_F64:.0e} | **ERROR** ({cell(short_error(exc))})"
        report.add(f"| torch vs ssd_reference (sanity) | {case} | float64 | {l} | {h} | {b} | {cells} | — | — |")


def fused_rows(report: Report, device: torch.device, cfg: Config) -> None:
    for width, length in cfg.stages:
        heads = 2 * width // HEADDIM
        for case, rot in CASES.items():
            base = make_inputs(cfg.batch, length, heads, rot, seed=length + int(rot))
            for dtype, tol, tol_g in DTYPES:
                name = "float32" if dtype == torch.float32 else "bf16"
                lead = f"| torch vs fused | {case} | {name} | {length} | {heads} | {cfg.batch}"
                what = f"{case}, {name}, L={length}"
                try:
                    fwd, grad = parity_case(device, base, dtype)
                except Exception as exc:
                    report.failures.append(f"torch vs fused, {what}: {short_error(exc)}")
                    report.add(f"{lead} | — | — | {tol:.0e} | **ERROR** ({cell(short_error(exc))}) | — | — |")
                    release(device)
                    continue
                (abs_d, rel_d, t64, f64), (g_abs, g_rel, g_name) = fwd, grad
                res = verdict(report, rel_d <= tol, f"forward {what}")
                report.add(f"{lead} | {abs_d:.2e} | {rel_d:.2e} | {tol:.0e} | {res} | {t64:.2e} | {f64:.2e} |")
                res = verdict(report, g_rel <= tol_g, f"gradients {what}")
                report.add(
                    f"| torch vs fused, gradients (worst: {g_name}) | {case} | {name} | {length} | {heads} | "
                    f"{cfg.batch} | {g_abs:.2e} | {g_rel:.2e} | {tol_g:.0e} | {res} | — | — |"
                )
                release(device)


def parity_case(
    device: torch.device, base: dict[str, Tensor | None], dtype: torch.dtype
) -> tuple[tuple[float, float, float, float], tuple[float, float, str]]:
    """Forward (abs, rel, torch vs float64, fused vs float64) and worst input-gradient (abs, rel, name)."""
    rounded = cast(base, device, dtype)  # the inputs the fused path sees (bf16-rounded for bf16)
    ref_inp = cast(rounded, device, torch.float32)  # the same values in float32 for the pure-PyTorch reference
    with torch.no_grad():
        ref = ssd(**ref_inp, chunk_size=CHUNK, backend="torch")
        out = ssd(**rounded, chunk_size=CHUNK, backend="fused")
        ref64 = ssd(**cast(rounded, device, torch.float64), chunk_size=CHUNK, backend="torch")
    abs_d, rel_d = rel_diff(out, ref)
    t64, f64 = rel_diff(ref, ref64)[1], rel_diff(out, ref64)[1]
    del ref64

    gen = torch.Generator().manual_seed(1)
    upstream = torch.randn(ref.shape, generator=gen).to(device=device, dtype=dtype)
    g_ref = grads(leaves(ref_inp), "torch", upstream.float())
    g_out = grads(leaves(rounded), "fused", upstream)
    worst = (0.0, -1.0, "")
    for k in g_ref:
        g_abs, g_rel = rel_diff(g_out[k], g_ref[k])
        if not math.isfinite(g_rel):
            g_rel = math.inf
        if g_rel > worst[1]:
            worst = (g_abs, g_rel, k)
    return (abs_d, rel_d, t64, f64), worst


def parity(report: Report, device: torch.device, status: FusedStatus, cfg: Config) -> None:
    report.add(
        "## 2. SSD parity",
        "",
        f"Relative difference = max |out − ref| / max |ref| over the whole output (gradients: over each input "
        f"tensor, worst one shown). Tolerances: float32 forward ≤ {TOL_F32:.0e}; bf16 forward ≤ {TOL_BF16:.0e} "
        f"(fused on bf16 inputs, output bf16, against the float32 pure-PyTorch output on the same bf16-rounded "
        f"inputs); gradients float32 ≤ {TOL_GRAD_F32:.0e}, bf16 ≤ {TOL_GRAD_BF16:.0e}; float64 sanity row "
        f"≤ {TOL_F64:.0e}. Inputs: model-like (Δ from the Mamba-2 init range, A in [−16, −1], B, C per head, "
        f"λ = sigmoid(randn), ω = π·tanh(randn) on {PAIRS} pairs), head dim {HEADDIM}, state {STATE}, chunk {CHUNK}. "
        '"vs float64": relative difference to the pure-PyTorch path in float64 on the same inputs.',
        "",
        *PARITY_HEADER,
    )
    sanity_rows(report, device)
    if status.available:
        fused_rows(report, device, cfg)
    else:
        sizes = ", ".join(str(length) for _, length in cfg.stages)
        report.add(
            f"| torch vs fused (forward and gradients) | mamba2, trapezoid+rotation | float32, bf16 | {sizes} | — | "
            f"{cfg.batch} | — | — | {TOL_F32:.0e} / {TOL_BF16:.0e} | unavailable ({cell(status.reason)}) | — | — |"
        )
    report.add("")


# --------------------------------------------------------------------------------------------------------------------
# 3. SSD speed
# --------------------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one synchronised call of ``fn`` takes."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_ms(
    fn: Callable[[], object], device: torch.device, cfg: Config, first_s: float | None = None
) -> tuple[float, int]:
    """Median wall time in ms of ``fn`` over up to ``cfg.repeat`` synchronised calls after ``cfg.warmup`` calls.

    A series stops early (after one timed call at least) when the next call would take it past ``cfg.budget_s``.
    ``first_s``: the caller already made one call that took this long; it counts as a warm-up call, or as the first
    timed call when there is no warm-up. Returns (median ms, number of timed calls).
    """
    warmup, times = cfg.warmup, []
    if first_s is not None:
        if warmup:
            warmup -= 1
        else:
            times.append(first_s)
    for _ in range(warmup):
        timed(fn, device)
    t_series = time.perf_counter() - sum(times)
    while len(times) < cfg.repeat:
        if times and time.perf_counter() - t_series + statistics.median(times) > cfg.budget_s:
            break
        times.append(timed(fn, device))
    return 1e3 * statistics.median(times), len(times)


def time_ssd(inputs: dict[str, Tensor | None], backend: str, device: torch.device, cfg: Config) -> tuple[str, str]:
    """(forward ms, forward+backward ms) as table cells."""

    def forward() -> None:
        with torch.no_grad():
            ssd(**inputs, chunk_size=CHUNK, backend=backend)

    grad_inp = leaves(inputs)
    named = [v for v in grad_inp.values() if v is not None]
    upstream = torch.randn_like(grad_inp["x"])

    def fwd_bwd() -> None:
        y = ssd(**grad_inp, chunk_size=CHUNK, backend=backend)
        torch.autograd.grad(y, named, upstream)

    cells = []
    for fn in (forward, fwd_bwd):
        ms, n = median_ms(fn, device, cfg)
        cells.append(f"{ms:.2f}" + ("" if n >= 3 else f" ({n}×)"))
    return cells[0], cells[1]


def speed_up(results: dict[str, tuple[str, str]], i: int) -> str:
    """torch time / fused time for column ``i`` (0: forward, 1: fwd+bwd), or a dash when either did not run."""
    try:
        t, f = (float(results[b][i].split()[0]) for b in ("torch", "fused"))
    except ValueError:
        return "—"
    return f"{t / f:.2f}×"


def speed(report: Report, device: torch.device, status: FusedStatus, cfg: Config) -> None:
    report.add(
        "## 3. SSD speed",
        "",
        f"Median ms of up to {cfg.repeat} calls after {cfg.warmup} warm-up calls (synchronised; '(n×)': fewer calls "
        "within the time budget); bf16 inputs, trapezoid + rotation, forward under no_grad, fwd+bwd = forward and "
        "the gradients of every input.",
        "",
        "| L | heads | batch | torch fwd ms | fused fwd ms | fwd speed-up | torch fwd+bwd ms | fused fwd+bwd ms "
        "| fwd+bwd speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    )
    for width, length in cfg.stages:
        heads = 2 * width // HEADDIM
        inputs = cast(make_inputs(cfg.batch, length, heads, True, seed=length), device, torch.bfloat16)
        results = {}
        for backend in ("torch", "fused"):
            if backend == "fused" and not status.available:
                results[backend] = (f"unavailable ({status.reason})",) * 2
                continue
            try:
                results[backend] = time_ssd(inputs, backend, device, cfg)
            except Exception as exc:
                report.failures.append(f"speed {backend} L={length}: {short_error(exc)}")
                results[backend] = (f"**ERROR** ({short_error(exc)})",) * 2
            release(device)

        t, f = results["torch"], results["fused"]
        report.add(
            f"| {length} | {heads} | {cfg.batch} | {cell(t[0])} | {cell(f[0])} | {speed_up(results, 0)} | "
            f"{cell(t[1])} | {cell(f[1])} | {speed_up(results, 1)} |"
        )
        del inputs
        release(device)
    report.add("")


# --------------------------------------------------------------------------------------------------------------------
# 4. Model throughput
# --------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def peak_memory(device: torch.device, out: list[str]) -> Iterator[None]:
    """Append the peak allocated memory (MiB) of the block to ``out``."""
    if device.type != "cuda":
        yield
        out.append("n/a (CPU)")
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    sync(device)
    out.append(f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}")


def model_row(backend: str, device: torch.device, cfg: Config, amap_ref: list[Tensor]) -> str:
    """One table row for ``ssd_backend=backend``; ``amap_ref`` holds the torch backend's anomaly map (or is filled)."""
    from anomalib_mambaadv2.loss import ReconstructionLoss
    from anomalib_mambaadv2.torch_model import MambaADv2Model

    torch.manual_seed(0)  # the same weights for every backend
    model = MambaADv2Model(
        backbone=cfg.backbone,
        pre_trained=False,
        image_size=(cfg.image, cfg.image),
        depths=cfg.depths,
        ssd_backend=backend,
    ).to(device)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(cfg.model_batch, 3, cfg.image, cfg.image, generator=gen).to(device)
    # bf16 autocast on CUDA; on the CPU bf16 is mostly emulated (several times slower), so float32 there.
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    mem: list[str] = []

    # Inference first, on the freshly initialised weights, so the anomaly maps of the backends are comparable.
    model.eval()

    def infer() -> Tensor:
        with torch.inference_mode(), autocast:
            return model(images).anomaly_map

    with peak_memory(device, mem):
        got: list[Tensor] = []
        first_s = timed(lambda: got.append(infer().float().cpu()), device)
        infer_ms, _ = median_ms(infer, device, cfg, first_s=first_s)
        amap = got[0]
    if amap_ref:
        diff = f"{rel_diff(amap, amap_ref[0])[1]:.2e}"
    else:
        amap_ref.append(amap)
        diff = "(reference)"

    model.train()
    loss_fn = ReconstructionLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def train_step() -> None:
        with autocast:
            enc, dec = model(images)
            loss = loss_fn(enc, dec)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with peak_memory(device, mem):
        train_ms, _ = median_ms(train_step, device, cfg)
    b = cfg.model_batch
    return (
        f"| {backend} | {b / train_ms * 1e3:.1f} | {train_ms:.1f} | {mem[1]} | {b / infer_ms * 1e3:.1f} | "
        f"{infer_ms:.1f} | {mem[0]} | {diff} |"
    )


def model_throughput(report: Report, device: torch.device, status: FusedStatus, cfg: Config) -> None:
    report.add(
        "## 4. Model throughput",
        "",
        f"MambaADv2Model({cfg.backbone}, pre_trained=False, {cfg.image}×{cfg.image}, depths {cfg.depths}), batch "
        f"{cfg.model_batch}, {'bf16 autocast' if device.type == 'cuda' else 'float32 (no autocast on the CPU)'}. "
        "Train step = forward + ReconstructionLoss + backward + AdamW step; "
        f"inference = eval-mode forward under inference_mode. Median of up to {cfg.repeat} steps after "
        f"{cfg.warmup} warm-up steps. Peak memory = torch.cuda.max_memory_allocated over the timed block "
        "(weights included). Anomaly-map difference (info, not a check): max |map − map_torch| / max |map_torch| "
        "for the same weights and images.",
        "",
        "| ssd_backend | train images/s | train ms/step | train peak MiB | inference images/s | inference ms/batch "
        "| inference peak MiB | anomaly map rel diff vs torch |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    )
    amap_ref: list[Tensor] = []
    for backend in ("torch", "fused"):
        if backend == "fused" and not status.available:
            report.add(f"| fused | unavailable ({cell(status.reason)}) | — | — | — | — | — | — |")
            continue
        try:
            report.add(model_row(backend, device, cfg, amap_ref))
            release(device)  # the model and its optimizer went with model_row's frame
        except Exception as exc:
            report.failures.append(f"model {backend}: {short_error(exc)}")
            report.add(f"| {backend} | **ERROR** ({cell(short_error(exc))}) | — | — | — | — | — | — |")
            release(device)
    report.add("")


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown report path")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if present")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (always on without CUDA)")
    parser.add_argument(
        "--no-bare-import",
        dest="bare_import",
        action="store_false",
        help="do not load mamba_ssm's Triton kernels when `import mamba_ssm` itself fails",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every check, write and print the report; 0 when all checks that could run passed, else 1."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    notes = []
    want_cuda = args.device in {"auto", "cuda"}
    if args.device == "cuda" and not torch.cuda.is_available():
        notes.append("- `--device cuda` asked for, but CUDA is not available: ran on the CPU.")
    device = torch.device("cuda" if want_cuda and torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type == "cpu"
    cfg = QUICK if quick else FULL
    if device.type == "cpu":  # a smoke run: no warm-up calls (there is nothing to compile or autotune)
        cfg = dataclasses.replace(cfg, warmup=0)

    report = Report()
    report.add(
        "# MambaADv2 GPU check",
        "",
        f"`python benchmarks/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)}` on {device.type}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "",
    )
    status = fused_status(device, args.bare_import)
    environment(report, device, status, cfg, quick)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    phases = [f"set-up {time.perf_counter() - t_start:.0f} s"]
    for name, section in (("parity", parity), ("speed", speed), ("model", model_throughput)):
        t0 = time.perf_counter()
        section(report, device, status, cfg)
        phases.append(f"{name} {time.perf_counter() - t0:.0f} s")

    report.add("## Summary", "")
    report.add(*notes)
    if report.failures:
        report.add(f"- **{len(report.failures)} check(s) failed or raised**:")
        report.add(*(f"  - {cell(f)}" for f in report.failures))
    else:
        report.add("- All checks that could run passed.")
    if not status.available:
        report.add(f"- Fused path not checked: unavailable ({status.reason}).")
    report.add(f"- Wall time {time.perf_counter() - t_start:.0f} s ({', '.join(phases)}).")

    text = report.text()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"# wrote {args.out}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
