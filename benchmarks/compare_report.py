# SPDX-License-Identifier: Apache-2.0
"""Reports of ``benchmarks/compare.py``: CSV rows, the markdown tables and the bar chart."""

from __future__ import annotations

import csv
import math
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contenders import ABLATION_METRICS, METRICS

CSV_COLUMNS = (
    "mode", "model", "category", *METRICS, "train_s", "test_s", "latency_ms", "peak_rss_mb", "rss_before_fit_mb",
    "peak_gpu_mb", "params_m", "trainable_params_m", "gmacs", "encoder", "encoder_diff", "split", "memory", "notes",
)  # fmt: skip

ABLATION_COLUMNS = (
    "variant", "category", *METRICS, "train_s", "decoder_latency_ms", "decoder_gmacs", "model_gmacs", "params_m",
    "trainable_params_m", "peak_rss_mb", "encoder", "encoder_diff", "split", "settings",
)  # fmt: skip


def mean_rows(rows: list[dict], key: str, mode: str) -> list[dict]:
    """Per-category mode: replace each model's per-unit ``mean`` rows by one mean over its category rows."""
    if mode != "per-category":
        return rows
    category_rows = [r for r in rows if r["category"] != "mean"]
    out = list(category_rows)
    for name in dict.fromkeys(r[key] for r in category_rows):
        mine = [r for r in category_rows if r[key] == name]
        mean = dict(mine[0], category="mean")
        for column, value in mine[0].items():
            if isinstance(value, float):
                mean[column] = statistics.fmean(r[column] for r in mine)
        mean["encoder"] = ",".join(dict.fromkeys(r["encoder"] for r in mine))
        mean["split"] = "per category"
        out.append(mean)
    return out


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table (``n/a`` for NaN)."""
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Rows as CSV (floats with 6 significant digits)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def make_chart(rows: Sequence[dict], path: Path) -> None:
    """Bar chart: mean quality metrics per model, and the four costs."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    means = [r for r in rows if r["category"] == "mean"]
    names = [r["model"] for r in means]
    fig = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    axes = fig.subplot_mosaic([["quality"] * 4, ["train", "latency", "memory", "macs"]], height_ratios=[3, 2])
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(METRICS))
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:gray"]
    for i, row in enumerate(means):
        values = [row[m] for m in METRICS]
        bars = axes["quality"].bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=row["model"])
        for bar in bars:
            bar.set_color(colours[i % len(colours)])
    axes["quality"].set_xticks(x, [m.replace("_", " ") for m in METRICS])
    axes["quality"].set_ylabel("mean over categories")
    axes["quality"].legend(loc="upper center", ncols=max(len(names), 1), bbox_to_anchor=(0.5, 1.0), frameon=False)
    axes["quality"].set_ylim(0, 1.12)
    axes["quality"].grid(axis="y", alpha=0.3)
    for key, column, label in (
        ("train", "train_s", "training time (s)"),
        ("latency", "latency_ms", "latency, batch 1 (ms)"),
        ("memory", "peak_rss_mb", "peak RSS in fit (MiB)"),
        ("macs", "gmacs", "multiply-adds (G)"),
    ):
        ax = axes[key]
        ax.bar(range(len(names)), [r[column] for r in means], color=colours[: len(names)])
        ax.set_xticks(range(len(names)), [n.replace("ReverseDistillation", "RD") for n in names], fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, format="png")


def command_line(argv: Sequence[str] | None, script: str = "compare.py") -> str:
    """The command as typed (``python benchmarks/compare.py ...``)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return shlex.join(["python", f"benchmarks/{script}", *args])


def header_lines(title: str, info: dict[str, Any]) -> list[str]:
    """Title, command, machine and settings lines shared by both reports."""
    m, s, spec = info["machine"], info["settings"], info["spec"]
    return [
        f"# {title}",
        "",
        f"Run {info['started']} with:",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        "Machine: "
        f"{m['cpu']}, {m['cpu_count']} logical cores, {m['torch_threads']} torch threads, GPU: {m['gpu']}; "
        f"Code: commit {m.get('commit', 'unknown')}. "
        f"Python {m['python']}, torch {m['torch']}, anomalib {m['anomalib']}, timm {m['timm']}; {m['platform']}; "
        f"OMP_WAIT_POLICY={m['omp_wait_policy']}, MALLOC_MMAP_THRESHOLD_={m['malloc_mmap_threshold']}. "
        f"Load average (1/5/15 min) at start {info['load_start']}, at end {info['load_end']} (a 1-minute load above "
        "the core count means other work shared the CPU and the times are inflated).",
        "",
        f"Data: {info['data']}; mode **{info['mode']}**; categories {', '.join(info['categories'])}. "
        f"Image size {s.image_size}, epochs {s.epochs}, batch {s.batch_size}, seed {s.seed}; training and testing on "
        f"`{info['accelerator']}`, latency and multiply-adds on the CPU.",
        "",
        f"Encoder (shared): `{spec.backbone}`, layers {', '.join(spec.layers)}, weights `{spec.weights}` "
        f"(fingerprint `{info['encoder']}`), input normalisation mean {spec.mean} std {spec.std}.",
        "",
    ]


def write_markdown(path: Path, rows: Sequence[dict], info: dict[str, Any]) -> None:
    """``compare.md``: mean table with costs, per-category table, notes."""
    means = [r for r in rows if r["category"] == "mean"]
    lines = header_lines("Head-to-head: MambaADv2 vs PatchCore vs Reverse Distillation", info)
    lines += [
        "## Mean over categories",
        "",
        "| model | " + " | ".join(METRICS) + " | train (s) | latency b1 (ms) | peak RSS fit (MiB) | "
        "params (M) all / trainable | G MACs |",
        "|---" * (len(METRICS) + 6) + "|",
    ]
    for r in means:
        lines.append(
            f"| {r['model']} | "
            + " | ".join(fmt(r[m]) for m in METRICS)
            + f" | {fmt(r['train_s'], 1)} | {fmt(r['latency_ms'], 1)} | {fmt(r['peak_rss_mb'], 0)} "
            f"(+{fmt(r['peak_rss_mb'] - r['rss_before_fit_mb'], 0)}) | {fmt(r['params_m'], 2)} / "
            f"{fmt(r['trainable_params_m'], 2)} | {fmt(r['gmacs'], 2)} |"
        )
    lines += [
        "",
        "![quality and cost per model](compare.png)",
        "",
        "## Per category",
        "",
        "| model | category | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    lines += [
        f"| {r['model']} | {r['category']} | " + " | ".join(fmt(r[m]) for m in METRICS) + " |"
        for r in rows
        if r["category"] != "mean"
    ]
    lines += [
        "",
        "## How it was measured",
        "",
        "- Same data, split, encoder weights, image size, seed, pre-processing (resize + the encoder's normalisation), "
        "post-processing (`SoftPostProcessor`: strictly monotonic, no ties) and metrics (MambaADv2's evaluator, split "
        "per category by `PerCategoryMetrics`, which every model returns from `configure_callbacks` after its "
        "post-processor) for every model; each trains with its own optimiser recipe. "
        f"MambaADv2 and RD train {info['settings'].epochs} epoch(s), PatchCore one (memory bank).",
        "- Encoder weights: one reference encoder is loaded once and its state dict copied with "
        "`load_state_dict(strict=True)` into each model's timm feature network (built with `pre_trained=False`); "
        f"fingerprints after training: {info['encoder_check']}.",
        f"- Splits: {info['split_check']}.",
        "- train (s): wall time of `engine.fit` (including the validation pass that fits thresholds and "
        "normalisation; PatchCore: feature extraction + coreset). In per-category mode, the mean row averages the "
        f"categories' models; total training time of all models: {info['total_train_s']:.1f} s.",
        f"- latency: Lightning module in eval mode (pre-processing, network, post-processing), batch 1, torch eager, "
        f"`no_grad`, median of {info['settings'].latency_repeats} calls after 2 warm-up calls, models interleaved.",
        "- peak RSS: the process's resident-set high-water mark during `engine.fit` (Linux VmHWM, reset through "
        "`/proc/self/clear_refs` before each fit after `gc.collect()` + `malloc_trim`); in brackets the growth over "
        "the RSS just before the fit (interpreter, libraries and earlier models included in the absolute value).",
        "- params: all parameters of the network / those outside the frozen encoder (PatchCore has none; its memory "
        "bank is a buffer). G MACs: `torch.utils.flop_counter` at batch 1 on the network (no pre/post-processing); "
        "PatchCore's count includes its nearest-neighbour matmul against the memory bank.",
    ]
    lines += [f"- {name}: {note}" for name, note in info["notes"].items() if note]
    lines += ["", f"Wall time of the whole run: {info['wall_s'] / 60:.1f} min."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_ablation_markdown(path: Path, rows: Sequence[dict], info: dict[str, Any]) -> None:
    """``ablation.md``: quality and decoder cost per MambaADv2 variant, with differences to ``default``."""
    means = {r["variant"]: r for r in rows if r["category"] == "mean"}
    base = means.get("default")
    lines = header_lines("MambaADv2 ablation", info)
    lines += [
        "| variant | settings | "
        + " | ".join(ABLATION_METRICS)
        + " | decoder latency b1 (ms) | decoder G MACs | model G MACs | params (M) | train (s) |",
        "|---" * (len(ABLATION_METRICS) + 7) + "|",
    ]
    for name, r in means.items():
        cells = []
        for metric in ABLATION_METRICS:
            delta = f" ({r[metric] - base[metric]:+.4f})" if base is not None and name != "default" else ""
            cells.append(fmt(r[metric]) + delta)
        lines.append(
            f"| {name} | `{r['settings']}` | " + " | ".join(cells) + f" | {fmt(r['decoder_latency_ms'], 1)} | "
            f"{fmt(r['decoder_gmacs'], 3)} | {fmt(r['model_gmacs'], 3)} | {fmt(r['params_m'], 2)} | "
            f"{fmt(r['train_s'], 1)} |"
        )
    lines += [
        "",
        "Quality: mean over categories (in brackets: difference to `default`); every metric per category is in "
        "`ablation.csv`. Decoder latency: `MambaADv2Model.decode` on precomputed encoder features (bottleneck + "
        "decoder), batch 1, torch eager, `no_grad`, eval mode, median of "
        f"{info['settings'].latency_repeats} interleaved calls. G MACs: `torch.utils.flop_counter` at batch 1.",
        f"- Encoder fingerprints after training: {info['encoder_check']}; splits: {info['split_check']}.",
        "",
        f"Wall time of the whole run: {info['wall_s'] / 60:.1f} min.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def same_for_all(values: Sequence[str], what: str) -> str:
    """ "identical for all models (...)" or the distinct values, marked."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) == 1:
        return f"identical for all models ({what} `{distinct[0]}`)"
    return f"**DIFFER**: {', '.join(distinct)}"
