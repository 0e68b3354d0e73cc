# SPDX-License-Identifier: Apache-2.0
"""SSD sections of ``benchmarks/gpu_check.py``: parity of the fused path with the pure-PyTorch one, and speed."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from gpu_check_common import (
    CHUNK,
    HEADDIM,
    PAIRS,
    SANITY,
    STATE,
    TOL_BF16,
    TOL_F32,
    TOL_F64,
    TOL_GRAD_BF16,
    TOL_GRAD_F32,
    Config,
    FusedStatus,
    Report,
    cell,
    release,
    short_error,
    sync,
)
from torch import Tensor

from anomalib_mambaadv2.components.ssd_reference import ssd, ssd_reference


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
