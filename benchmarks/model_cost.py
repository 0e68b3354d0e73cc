# SPDX-License-Identifier: Apache-2.0
"""Model cost: parameters, multiply-adds and CPU latency of MambaADv2 beside Anomalib's Reverse Distillation.

Usage::

    python benchmarks/model_cost.py                 # 256×256, resnet34, batch 1 and 8
    python benchmarks/model_cost.py --quick         # fewer repeats
    python benchmarks/model_cost.py --out results/model_cost.md
    python benchmarks/model_cost.py --compile       # also both models under torch.compile (inductor; minutes)

Multiply-adds are counted with ``torch.utils.flop_counter`` (matmuls, convolutions and the SSD's einsums; element-wise
work is not counted), at batch 1. Latencies are medians of interleaved runs, so the ratio is measured side by side.
Targets (issue 4): ≤ 22 M parameters, ≤ 9 G multiply-adds, latency ratio to Reverse Distillation ≤ 1.5 (torch
eager). ``--compile`` adds MambaADv2 and Reverse Distillation compiled with ``torch.compile`` (inductor, static
shapes, compiled before timing; the compile time is printed) as two more rows and their ratio, for information.

MambaADv2's eager latency depends on glibc's allocator state (its many large temporaries are mmapped and page-faulted
afresh unless malloc keeps them): ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296`` in the
environment made it lower and steadier here (README, "Cost and speed"); the header line records what was set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from benchinfo import count_gmacs, git_commit, interleaved_times
from torch import nn

from anomalib_mambaadv2.torch_model import MambaADv2Model

COMPILED = " (torch.compile)"  # suffix of the rows timed under torch.compile
MAMBAAD_LIKE = {
    "matrix_path": False, "trapezoid": False, "rotation": False, "freq_branch": False, "directions": (8, 8, 8, 8),
}  # fmt: skip


def reverse_distillation(size: int) -> nn.Module:
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    return ReverseDistillationModel(
        backbone="resnet34",
        input_size=(size, size),
        layers=["layer1", "layer2", "layer3"],
        anomaly_map_mode=AnomalyMapGenerationMode.ADD,
        pre_trained=False,
    )


def malloc_settings() -> str:
    """The glibc malloc variables that move MambaADv2's eager latency most (unset: glibc's adaptive defaults)."""
    names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")
    return ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in names)


def count_params(model: nn.Module) -> tuple[float, float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if hasattr(model, "encoder") and not isinstance(model, MambaADv2Model):  # RD freezes its encoder in the optimizer
        trainable = total - sum(p.numel() for p in model.encoder.parameters())
    return total / 1e6, trainable / 1e6


def count_macs(model: nn.Module, size: int) -> float:
    x = torch.randn(1, 3, size, size)
    return count_gmacs(lambda: model(x))


def latencies(models: dict[str, nn.Module], batch: int, size: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each model, timed interleaved (:func:`benchinfo.interleaved_times`)."""
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        times = interleaved_times({name: lambda model=model: model(x) for name, model in models.items()}, repeats)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    size, repeats = args.size, 3 if args.quick else 7

    models = {
        "MambaADv2": MambaADv2Model(pre_trained=False, image_size=(size, size)).eval(),
        "MambaAD-like ablation": MambaADv2Model(pre_trained=False, image_size=(size, size), **MAMBAAD_LIKE).eval(),
        "ReverseDistillation": reverse_distillation(size).eval(),
    }
    timed, compile_s = dict(models), {}
    if args.compile:  # compiled twice (batch 1 and 8, static shapes) before anything is timed
        for name in ("MambaADv2", "ReverseDistillation"):
            start = time.perf_counter()
            compiled = torch.compile(models[name], dynamic=False)
            with torch.no_grad():
                for batch in (1, 8):
                    compiled(torch.randn(batch, 3, size, size))
            compile_s[name] = time.perf_counter() - start
            timed[name + COMPILED] = compiled
    lines = [
        f"Model cost at {size}×{size}, resnet34 encoder (layer1-3), CPU threads: {torch.get_num_threads()}",
        f"Allocator settings: {malloc_settings()}; code: commit {git_commit()}",
        "",
        "| model | params total (M) | params trainable (M) | G multiply-adds | latency b1 (ms) | latency b8 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    lat1 = latencies(timed, 1, size, repeats)
    lat8 = latencies(timed, 8, size, max(repeats // 2, 2))
    for name in timed:
        model = models[name.removesuffix(COMPILED)]  # parameters and MACs of the module itself
        total, trainable = count_params(model)
        lines.append(
            f"| {name} | {total:.2f} | {trainable:.2f} | {count_macs(model, size):.2f} | {lat1[name]:.0f} | "
            f"{lat8[name]:.0f} |"
        )
    total, _ = count_params(models["MambaADv2"])
    macs = count_macs(models["MambaADv2"], size)
    r1 = lat1["MambaADv2"] / lat1["ReverseDistillation"]
    r8 = lat8["MambaADv2"] / lat8["ReverseDistillation"]
    lines += [
        "",
        f"params {total:.2f} M (target ≤ 22): {'PASS' if total <= 22 else 'FAIL'}",
        f"multiply-adds {macs:.2f} G (target ≤ 9): {'PASS' if macs <= 9 else 'FAIL'}",
        f"latency MambaADv2 / ReverseDistillation: batch 1 {r1:.2f}×, batch 8 {r8:.2f}× "
        f"(target ≤ 1.5): {'PASS' if max(r1, r8) <= 1.5 else 'FAIL'}",
    ]
    if args.compile:
        ours, theirs = "MambaADv2" + COMPILED, "ReverseDistillation" + COMPILED
        lines.append(
            f"latency under torch.compile, MambaADv2 / ReverseDistillation: batch 1 {lat1[ours] / lat1[theirs]:.2f}×, "
            f"batch 8 {lat8[ours] / lat8[theirs]:.2f}× (compile time {compile_s['MambaADv2']:.0f} s vs "
            f"{compile_s['ReverseDistillation']:.0f} s)"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
