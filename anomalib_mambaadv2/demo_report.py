# SPDX-License-Identifier: Apache-2.0
"""The demo's report: the metric table, the example grid and ``report.md`` (see :mod:`anomalib_mambaadv2.demo`)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .demo import Predictions

METRICS = ("image_AUROC", "image_AUPR", "image_F1Max", "pixel_AUROC", "pixel_AUPR", "pixel_F1Max", "pixel_AUPRO")
TARGETS = {"image_AUROC": 0.95, "pixel_AUROC": 0.95}  # the demo's quality goal (mean over categories)
REPORT_NAME = "report.md"


def metric_table(results: dict[str, float], categories: Sequence[str]) -> str:
    """Markdown table of ``<category>/<metric>`` results, one row per category and the mean row."""
    header = "| category | " + " | ".join(METRICS) + " |"
    lines = [header, "|---" + "|---:" * len(METRICS) + "|"]
    for name in [*categories, "mean"]:
        cells = [f"{results[f'{name}/{m}']:.4f}" if f"{name}/{m}" in results else "n/a" for m in METRICS]
        label = f"**{name}**" if name == "mean" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_samples(pred: Predictions, per_category: int) -> list[int]:
    """Indices of up to ``per_category`` defective images per category, one defect type after another."""
    chosen = []
    for category in dict.fromkeys(pred.categories):
        by_type: dict[str, list[int]] = {}
        for i, (c, t) in enumerate(zip(pred.categories, pred.defect_types, strict=True)):
            if c == category and pred.labels[i] == 1:
                by_type.setdefault(t, []).append(i)
        picked: list[int] = []
        while len(picked) < per_category and any(by_type.values()):
            for t in sorted(by_type):
                if by_type[t] and len(picked) < per_category:
                    picked.append(by_type[t].pop(0))
        chosen += picked
    return chosen


def make_grid(pred: Predictions, path: str | Path | None = None, per_category: int = 4) -> Figure:
    """Image / ground truth / anomaly-map overlay of a few defects per category (rows) side by side (columns).

    The overlay shows the normalised anomaly map (``jet``, shown from 0 to 1; 0.5 is the pixel threshold) over the
    image, with the ground-truth outline in white. Saved as PNG when ``path`` is given.

    Returns:
        The matplotlib figure (not attached to pyplot, so it works without a display).
    """
    from matplotlib.figure import Figure

    chosen = grid_samples(pred, per_category)
    categories = list(dict.fromkeys(pred.categories[i] for i in chosen))
    cols = max(sum(pred.categories[i] == c for i in chosen) for c in categories) if chosen else 1
    rows = 3 * max(len(categories), 1)
    fig = Figure(figsize=(1.9 * cols + 0.6, 1.9 * rows), dpi=90, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for r, category in enumerate(categories):
        indices = [i for i in chosen if pred.categories[i] == category]
        for c, i in enumerate(indices):
            image = pred.images[i].transpose(1, 2, 0)
            top, middle, bottom = axes[3 * r, c], axes[3 * r + 1, c], axes[3 * r + 2, c]
            top.imshow(image)
            top.set_title(f"{pred.defect_types[i]} · score {pred.scores[i]:.2f}", fontsize=8)
            middle.imshow(pred.masks[i], cmap="gray", vmin=0, vmax=1)
            bottom.imshow(image)
            bottom.imshow(pred.maps[i], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            if pred.masks[i].any():
                bottom.contour(pred.masks[i], levels=[0.5], colors="white", linewidths=0.8)
        for k, what in enumerate(("image", "ground truth", "anomaly map")):
            axes[3 * r + k, 0].set_ylabel(f"{category}\n{what}" if k == 0 else what, fontsize=9)
    if path is not None:
        fig.savefig(path, format="png")
    return fig


def environment() -> dict[str, Any]:
    """Versions, cores and threads the run had."""
    import anomalib
    import openvino

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "openvino": openvino.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }


def load_average() -> str:
    """1/5/15-minute load averages, or n/a."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def write_report(out: Path, info: dict[str, Any]) -> Path:
    """Write ``<out>/report.md`` from the run's ``info`` (what ``metrics.json`` holds); returns its path."""
    s = info["settings"]
    timer_rows = "\n".join(
        f"| {title} | {wall:.1f} | {cpu:.1f} |" for title, wall, cpu in info["steps"]
    )  # fmt: skip
    total_wall = sum(w for _, w, _ in info["steps"])
    total_cpu = sum(c for _, _, c in info["steps"])
    parity = info["parity"]
    results = info["results"]
    means = {m: results.get(f"mean/{m}", float("nan")) for m in TARGETS}
    met = all(means[m] >= t for m, t in TARGETS.items())
    target_text = ", ".join(f"mean {m} {means[m]:.4f} (goal ≥ {t})" for m, t in TARGETS.items())
    env, enc = info["environment"], info["encoder"]
    text = f"""# MambaADv2 demo: embedded texture data

Run {info["started"]} with `{info["command"]}`
(Python {env["python"]}, torch {env["torch"]}, anomalib {env["anomalib"]}, OpenVINO {env["openvino"]};
{env["cpu_count"]} CPU cores, {env["torch_threads"]} torch threads, no GPU; load average at start
{info["load_start"]}, at end {info["load_end"]}; a load above the core count means other work shared the CPU and
the wall times below are inflated).

## What was run

1. Dataset: `{info["data_root"]}` ({"reused" if info["data_reused"] else "generated"}), the embedded scikit-image
   textures with synthetic defects and exact masks: {s["n_train"]} normal training images per category (10 % held
   out for validation with synthetic anomalies), {s["n_test_good"]} normal and {s["n_test_defect"]} defective test
   images per category (scratch, hole, foreign patch, stain), {s["image_size"]}×{s["image_size"]} px.
2. Training: one MambaADv2 model for all {len(info["categories"])} categories ({", ".join(info["categories"])}):
   frozen ImageNet EfficientNet-Lite0 encoder (`{enc["backbone"]}`, layers {", ".join(enc["layers"])}, weights
   `{enc["weights"]}`, inputs scaled to [-1, 1]), decoder depths {list(s["depths"])},
   {info["trainable_params"] / 1e6:.2f} M trainable parameters; {s["epochs"]} epoch{"s" if s["epochs"] != 1 else ""}, \
batch {s["batch_size"]},
   AdamW lr {s["lr"]} × batch/16, ×0.1 at 80 % of the steps, seed {s["seed"]}.
3. Test: `engine.test` on all test images, metrics per category and their mean.
4. Export: `engine.export(export_type="openvino")` → `{info["xml"]}`.
5. OpenVINO inference (CPU, `INFERENCE_PRECISION_HINT=f32`) on all {parity["images"]} test images, compared with
   the PyTorch model (same pre- and post-processing).

| step | wall time (s) | CPU time (s) |
|---|---:|---:|
{timer_rows}
| **total** | **{total_wall:.1f}** | **{total_cpu:.1f}** |

CPU time is the process's CPU time summed over its threads (about wall × 2 when two cores are free).

## Test metrics per category

{metric_table(results, info["categories"])}

Goal: {target_text}: **{"met" if met else "not met"}**.

## PyTorch vs OpenVINO

| images | max abs diff, image score | max abs diff, anomaly map | same decision | tolerance | result |
|---:|---:|---:|---:|---:|---|
| {parity["images"]} | {parity["max_abs_diff_score"]:.2e} | {parity["max_abs_diff_map"]:.2e} | \
{parity["same_decision"]}/{parity["images"]} | {parity["atol"]:g} | {"**pass**" if parity["passed"] else "**FAIL**"} |

Scores and maps are the exported model's outputs: normalised with the thresholds and ranges learnt on the validation
split (0.5 = threshold) and squashed strictly monotonically into (0, 1) (see `SoftPostProcessor`: anomalib's clipping
would tie every score above the validation maximum); the test metrics above are computed from these values and equal
those of the raw scores.

## Examples

![image, ground truth and anomaly map of defects of each category](grid.png)

Rows per category: the test image (title: defect type and normalised image score), its ground-truth mask, and the
PyTorch anomaly map over the image (jet colour map, 0 to 1, 0.5 = pixel threshold; ground truth outlined in white).

## Files

`metrics.json` (everything above, machine-readable), `per_category_metrics.csv`, `grid.png`, `export/` (OpenVINO IR),
`run/` (Lightning run folder with the checkpoint).
"""
    path = out / REPORT_NAME
    path.write_text(text, encoding="utf-8")
    return path
