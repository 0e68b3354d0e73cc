# SPDX-License-Identifier: Apache-2.0
"""Benchmark the SSD scan: chunked (linear in L) vs. step-by-step loop vs. naive L×L quadratic form, on CPU.

Usage::

    cd /work/main && .venv/bin/python benchmarks/ssd_scan.py [--quick] [--batch 2] [--chunk 32] [--out PATH]

For each sequence length L in {256, 1024, 4096, 16384} the heads are those of the model stage with that length
(inner width 2·C, head dim 32: L=256 → 16 heads, L=1024 → 8, L=4096 → 4) and L=16384 reuses 4 heads, so
t(16384)/t(4096) measures pure length scaling. Inputs are random but realistic: ``dt = softplus(randn - 1)``,
``A = -exp(0.5·randn)``, ``lam = sigmoid(randn)``, ``omega = π·tanh(randn)``; one group, state 32, head dim 32,
``omega`` rotates state/4 pairs; trapezoid (``lam``) and rotation (``omega``) are on, as in the model.

Timed: median wall clock of a series of up to 7 calls (3 with ``--quick``) after warm-up calls, with
``torch.get_num_threads()`` threads. A series whose calls would exceed 8 s (3 s) gets fewer calls, a single one if
the first call alone does (cells marked ``(n×)``; e.g. the loop's backward at L=4096, which grows faster than L:
each ``x[:, t]``-style slice backpropagates by zero-filling and accumulating a full-size gradient). The machine may
be shared: each series waits for other processes to go quiet (from ``/proc/stat``) and is rerun if they kept
≥ 0.3 CPUs busy meanwhile; cells that stayed disturbed are marked ``†``; the CPU use of others per L is printed.
    * forward: one call under ``torch.no_grad()`` (inference);
    * fwd+bwd: one call with autograd on, then ``torch.autograd.grad(y.sum(), (x, dt, A, B, C, lam, omega))``.

Methods: ``ssd`` (chunked, ``--chunk`` tokens per chunk), ``ssd_reference`` (Python loop over tokens, only for
L <= 4096) and ``ssd_quadratic`` (skipped when one (b, h, L, L) float32 tensor would exceed 2 GiB: "skipped
(memory)"). ``--quick`` uses fewer repeats and stops at L=4096. ``--out PATH`` also writes the table (and the
ratios) as markdown.

Afterwards it prints the targets: reference/chunked forward at L=4096 (≥ 50×) and the chunked growth
t(16384)/t(4096) for forward and fwd+bwd (≤ 4.5, i.e. linear in L), each with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from benchinfo import git_commit

from anomalib_mambaadv2.components.ssd_reference import ssd, ssd_quadratic, ssd_reference

HEADDIM = 32
STATE = 32
GROUPS = 1
# L -> heads: stage widths C = 512/256/128/64 at L = 64/256/1024/4096, inner width 2·C, head dim 32.
HEADS = {256: 16, 1024: 8, 4096: 4, 16384: 4}
QUAD_LIMIT_GIB = 2.0
REF_MAX_L = 4096
GRAD_NAMES = ("x", "dt", "A", "B", "C", "lam", "omega")

NOISE_CPUS = 0.3  # a timed call is "disturbed" when other processes kept this many CPUs busy meanwhile
QUIET_WAIT_S = 20.0  # longest wait for a quiet machine before each timed call
RETRIES = 3  # how often a disturbed series of timed calls is run again
TICK_SLACK_S = 0.03  # /proc/stat and os.times() count 10 ms ticks

RATIO_REF_TARGET = 50.0
RATIO_LIN_TARGET = 4.5


def cpu_ticks() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far; None off Linux."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait (guest time is in user)
    own = os.times()
    return busy, own.user + own.system


def others_since(t_start: float, ticks_start: tuple[float, float] | None) -> float:
    """How many CPUs other processes kept busy, on average, since ``t_start``/``ticks_start`` (0 off Linux)."""
    ticks_end = cpu_ticks()
    if ticks_start is None or ticks_end is None:
        return 0.0
    others = (ticks_end[0] - ticks_start[0]) - (ticks_end[1] - ticks_start[1])
    return max(others, 0.0) / max(time.perf_counter() - t_start, 1e-6)


def disturbed(t_start: float, ticks_start: tuple[float, float] | None) -> bool:
    """Whether other processes used ``NOISE_CPUS`` or more since then (allowing for the 10 ms clock-tick grain)."""
    elapsed = time.perf_counter() - t_start
    return others_since(t_start, ticks_start) * elapsed >= NOISE_CPUS * elapsed + TICK_SLACK_S


def wait_quiet(max_wait_s: float) -> None:
    """Sleep (at most ``max_wait_s``) until other processes use less than ``NOISE_CPUS`` CPUs over a 0.3 s window."""
    deadline = time.perf_counter() + max_wait_s
    while time.perf_counter() < deadline:
        t0, ticks0 = time.perf_counter(), cpu_ticks()
        time.sleep(0.3)
        if not disturbed(t0, ticks0):
            return


def make_inputs(batch: int, length: int, heads: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random, realistic inputs for one (batch, length, heads) configuration; every tensor requires grad."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    b, l, h = batch, length, heads
    inputs = {
        "x": randn(b, l, h, HEADDIM),
        "dt": F.softplus(randn(b, l, h) - 1.0),
        "A": -torch.exp(0.5 * randn(b, l, h)),
        "B": randn(b, l, GROUPS, STATE),
        "C": randn(b, l, GROUPS, STATE),
        "lam": torch.sigmoid(randn(b, l, h)),
        "omega": math.pi * torch.tanh(randn(b, l, STATE // 4)),
    }
    return {k: v.contiguous().requires_grad_(True) for k, v in inputs.items()}


@dataclass
class Timing:
    """Median wall time in ms, the number of timed calls behind it and whether other processes disturbed them."""

    ms: float
    calls: int
    noisy: bool = False

    def __str__(self) -> str:
        text = f"{self.ms:.2f}" if self.ms < 10 else f"{self.ms:.1f}" if self.ms < 1000 else f"{self.ms:.0f}"
        if self.calls < 3:
            text += f" ({self.calls}×)"
        return text + (" †" if self.noisy else "")


def timeit(fn: Callable[[], object], repeats: int, warmup: int, budget_s: float) -> Timing:
    """Median wall time of ``fn`` over a series of calls that other processes left alone.

    The first call is timed: if it alone takes ``budget_s`` or more it is the single measurement. Otherwise it
    counts as a warm-up, ``warmup - 1`` more untimed calls follow, then a series of ``repeats`` timed calls, fewer
    (at least one) where they would not fit in ``budget_s``. Each series starts once the machine is quiet; a series
    during which other processes kept ``NOISE_CPUS`` or more CPUs busy is discarded and run again (``RETRIES`` times
    at most, once for a single slow call); if none is clean, the least disturbed one is kept and marked noisy (†).
    """

    def series(n: int) -> tuple[list[float], float, bool]:
        wait_quiet(QUIET_WAIT_S)
        t0, ticks0 = time.perf_counter(), cpu_ticks()
        times = []
        for _ in range(n):
            gc.collect()
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return times, others_since(t0, ticks0), disturbed(t0, ticks0)

    first, load, noisy = series(1)
    if first[0] >= budget_s * 1e3:
        n, tries, runs = 1, 2, [(first, load, noisy)]
    else:
        for _ in range(warmup - 1):
            fn()
        n, tries, runs = max(1, min(repeats, int(budget_s * 1e3 / max(first[0], 1e-3)))), 1 + RETRIES, []
    while len(runs) < tries and (not runs or runs[-1][2]):
        runs.append(series(n))
    times, _, noisy = runs[-1] if not runs[-1][2] else min(runs, key=lambda r: r[1])
    return Timing(statistics.median(times), n, noisy=noisy)


def bench_method(
    fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], repeats: int, warmup: int, budget_s: float
) -> tuple[Timing, Timing]:
    """(forward, fwd+bwd) timings of ``fn(**inputs)``."""
    grads_wrt = [inputs[k] for k in GRAD_NAMES]

    def forward() -> None:
        with torch.no_grad():
            fn(**inputs)

    def forward_backward() -> None:
        y = fn(**inputs)
        torch.autograd.grad(y.sum(), grads_wrt)

    return timeit(forward, repeats, warmup, budget_s), timeit(forward_backward, repeats, warmup, budget_s)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, print the markdown table and the target ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, L up to 4096")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--chunk", type=int, default=32, help="chunk size (default 32, the model's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)

    lengths = [256, 1024, 4096] if args.quick else [256, 1024, 4096, 16384]
    # (timed calls, warm-up calls, seconds per measurement): slow measurements get fewer calls (see `timeit`).
    repeats, warmup, budget_s = (3, 1, 3.0) if args.quick else (7, 2, 8.0)

    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"# SSD scan benchmark — torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), load avg {load}; batch {args.batch}, chunk {args.chunk}, "
        f"headdim {HEADDIM}, state {STATE}, groups {GROUPS}, trapezoid+rotation on"
        + (", quick" if args.quick else "")
        + f"; commit {git_commit()}"
    )
    # Sanity check (not timed): the three forms agree on a small problem.
    small = make_inputs(args.batch, 256, HEADS[256], seed=1)
    with torch.no_grad():
        y_chunk = ssd(**small, chunk_size=args.chunk)
        err_ref = (y_chunk - ssd_reference(**small)).abs().max().item()
        err_quad = (y_chunk - ssd_quadratic(**small)).abs().max().item()
    print(f"# L=256 check: max |chunked - reference| = {err_ref:.1e}, max |chunked - quadratic| = {err_quad:.1e}")
    print(
        "# times: median wall ms; forward under no_grad; '(n×)': timed fewer than 3 times; "
        f"'†': other processes used ≥ {NOISE_CPUS} CPUs during every try (unreliable)\n"
    )

    chunk = args.chunk

    def chunked(**kw: torch.Tensor) -> torch.Tensor:
        return ssd(**kw, chunk_size=chunk)

    lines = ["| L | heads | method | forward ms | fwd+bwd ms |", "|---:|---:|:---|---:|---:|"]
    results: dict[tuple[str, int], tuple[float, float]] = {}
    t_start, ticks_start = time.perf_counter(), cpu_ticks()
    for length in lengths:
        heads, t_len, ticks_len = HEADS[length], time.perf_counter(), cpu_ticks()
        inputs = make_inputs(args.batch, length, heads)
        score_gib = args.batch * heads * length * length * 4 / 1024**3
        methods = {
            f"chunked (Q={chunk})": (chunked, None),
            "reference loop": (ssd_reference, None if length <= REF_MAX_L else f"skipped (L > {REF_MAX_L})"),
            "quadratic": (ssd_quadratic, None if score_gib <= QUAD_LIMIT_GIB else "skipped (memory)"),
        }
        for method, (fn, skip) in methods.items():
            if skip is not None:
                lines.append(f"| {length} | {heads} | {method} | {skip} | {skip} |")
                continue
            fwd, fb = bench_method(fn, inputs, repeats, warmup, budget_s)
            results[method.split()[0], length] = (fwd.ms, fb.ms)
            lines.append(f"| {length} | {heads} | {method} | {fwd} | {fb} |")
        print(
            f"# L={length} done in {time.perf_counter() - t_len:.0f} s; "
            f"other processes used {others_since(t_len, ticks_len):.2f} CPUs meanwhile",
            flush=True,
        )
        del inputs
        gc.collect()
    table = "\n".join(lines)
    print(table)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    ratio_lines = []
    if ("reference", 4096) in results:
        ref_f, ref_fb = results["reference", 4096]
        ch_f, ch_fb = results["chunked", 4096]
        r = ref_f / ch_f
        ratio_lines.append(
            f"- reference loop / chunked, forward, L=4096: {r:.1f}× (target ≥ {RATIO_REF_TARGET:.0f}×) "
            f"{verdict(r >= RATIO_REF_TARGET)}   [fwd+bwd: {ref_fb / ch_fb:.1f}×, info]"
        )
    if ("chunked", 16384) in results:
        (f4, fb4), (f16, fb16) = results["chunked", 4096], results["chunked", 16384]
        for name, ratio in (("forward", f16 / f4), ("fwd+bwd", fb16 / fb4)):
            ratio_lines.append(
                f"- chunked t(16384)/t(4096), {name}: {ratio:.2f} (target ≤ {RATIO_LIN_TARGET}, linear = 4) "
                f"{verdict(ratio <= RATIO_LIN_TARGET)}"
            )
    else:
        ratio_lines.append("- chunked t(16384)/t(4096): n/a (L=16384 not run with --quick)")
    print("\nRatios:")
    print("\n".join(ratio_lines))
    wall = time.perf_counter() - t_start
    others = others_since(t_start, ticks_start)
    print(f"\n# sweep wall time {wall:.0f} s; other processes used {others:.2f} CPUs meanwhile")

    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n\nRatios:\n\n" + "\n".join(ratio_lines) + "\n", encoding="utf-8")
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
