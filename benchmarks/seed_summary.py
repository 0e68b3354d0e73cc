# SPDX-License-Identifier: Apache-2.0
"""Mean ± sd over seeds: one table from several ``compare.csv`` / ``ablation.csv`` / ``curve.csv`` files.

Usage::

    python benchmarks/seed_summary.py results/tire_s0/compare.csv results/tire_s1/compare.csv \\
        results/tire_s1_abl/ablation.csv --metrics image_AUROC pixel_AUROC pixel_AUPRO --out results/tire_seeds.md

Each file is one run of ``benchmarks/compare.py`` (head-to-head: a row per ``model``; ablation: a row per
``variant``, shown as ``MambaADv2[variant]``, the ``default`` variant as ``MambaADv2``) or of
``benchmarks/learning_curve.py`` (its last evaluated epoch per model). Rows are grouped by model (or variant) on the
``mean`` category. The files are the repetitions, one per seed (nothing here checks which seed a file ran; give each
once). A cell is ``mean ± sd (n)``: the mean and the sample standard deviation over the ``n`` files that have the
group (``n = 1``: the value alone).

``--paired A B`` adds a second table: per metric, the difference A − B within each file that has both (the same
seed, so the same data), as ``mean ± sd (n), se s, A ≥ B in k/n``, where ``s = sd / √n`` is the standard error of
the mean difference. Seeds move both models' results together (they draw the data), so the paired difference is
far less noisy than the difference of the two means.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

from benchinfo import claim_output

DEFAULT_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO", "train_s")


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    """``{model or MambaADv2[variant]: row}`` of one results file (its ``mean`` rows, or a curve's last epochs)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        msg = f"{path} has no rows."
        raise ValueError(msg)
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        if "epoch" in row:  # a learning curve: keep each model's last evaluated epoch
            out[row["model"]] = row
        elif row.get("category") == "mean":
            out[f"MambaADv2[{row['variant']}]" if "variant" in row else row["model"]] = row
    out = {("MambaADv2" if name == "MambaADv2[default]" else name): row for name, row in out.items()}
    if not out:
        msg = f"{path} has neither 'mean' rows (compare.py) nor epochs (learning_curve.py)."
        raise ValueError(msg)
    return out


def summarise(paths: list[Path], metrics: list[str]) -> list[tuple[str, dict[str, list[float]]]]:
    """Per group (first-seen order), the values of each metric over the files."""
    groups: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        for name, row in rows_of(path).items():
            values = groups.setdefault(name, {m: [] for m in metrics})
            for metric in metrics:
                if metric not in row:
                    msg = f"{path} has no column {metric!r}; its columns: {', '.join(row)}."
                    raise ValueError(msg)
                values[metric].append(float(row[metric]))
    return list(groups.items())


def cell(values: list[float], digits: int) -> str:
    """``mean ± sd (n)``; the value alone for one file."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f} (1)"
    return f"{statistics.fmean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f} ({len(finite)})"


def table(summary: list[tuple[str, dict[str, list[float]]]], metrics: list[str]) -> str:
    """The markdown table: a row per model or variant, a column per metric."""
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in summary:
        cells = [cell(values[m], 0 if m.endswith("_s") else 4) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(paths: list[Path], metrics: list[str], a: str, b: str) -> str:
    """The markdown table of ``a − b`` per metric over the files that have both groups."""
    diffs: dict[str, list[float]] = {m: [] for m in metrics}
    for path in paths:
        rows = rows_of(path)
        if a in rows and b in rows:
            for metric in metrics:
                diffs[metric].append(float(rows[a][metric]) - float(rows[b][metric]))
    if not diffs[metrics[0]]:
        msg = f"no file has both {a!r} and {b!r}."
        raise ValueError(msg)
    lines = [f"| {a} − {b} | mean ± sd (n) | standard error | {a} ≥ {b} |", "|---|---:|---:|---:|"]
    for metric, values in diffs.items():
        n = len(values)
        sd = statistics.stdev(values) if n > 1 else math.nan
        wins = sum(v >= 0 for v in values)
        lines.append(
            f"| {metric} | {statistics.fmean(values):+.4f} ± {sd:.4f} ({n}) | {sd / math.sqrt(n):.4f} | {wins}/{n} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Print (and with ``--out`` write) the table; returns it."""
    parser = argparse.ArgumentParser(prog="python benchmarks/seed_summary.py", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="compare.csv / ablation.csv / curve.csv of each seed")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="columns (%(default)s)")
    parser.add_argument("--paired", nargs=2, metavar=("A", "B"), help="also the per-file difference A − B")
    parser.add_argument("--out", type=Path, help="also write the table here (refused if it exists)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        parser.error(f"no such file(s): {', '.join(missing)}")
    try:
        text = table(summarise(args.files, args.metrics), args.metrics)
        if args.paired:
            text += "\n" + paired(args.files, args.metrics, *args.paired)
        if args.out:
            claim_output(args.out, args.overwrite).write_text(text, encoding="utf-8")
    except (ValueError, FileExistsError) as err:
        parser.exit(2, f"error: {err}\n")
    print(text, end="")
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
