# SPDX-License-Identifier: Apache-2.0
"""Learning curve: test metrics of MambaADv2 and Reverse Distillation against training steps and wall time.

Usage::

    python benchmarks/learning_curve.py --mvtec <root> --categories tire --epochs 10 --out results/curve_tire
    python benchmarks/learning_curve.py --tiny --epochs 2 --out /tmp/curve     # smoke test (numbers mean nothing)

Each model is trained once, exactly as ``benchmarks/compare.py`` trains it (same builders, shared encoder weights,
split, seed, pre-processing and ``Engine``; every option of compare.py other than ``--models``, ``--variants``,
``--out`` and ``--overwrite`` is passed on to it). After each epoch of ``--eval-epochs`` (default: every epoch) the
network in eval mode scores the test split and the evaluator's test metrics are computed on its raw scores: AUROC,
AUPR, F1Max and AUPRO depend only on the ranking of the scores, which the post-processor's monotonic normalisation
keeps, so the last point equals ``engine.test`` after the fit (the report checks it: ``final_check``). The random
number generators are saved before each evaluation and restored after it, so the evaluations do not change the
training: the last point is also what compare.py reports for the same seed and epochs.

The wall time of a point is the sum of the training epochs so far (first batch start to last batch end), without
the evaluations. Note that the learning-rate schedule is that of the whole run (MambaADv2: ×0.1 at 80 % of the
steps), so a point before the last is not what a shorter run would give; confirm a budget with its own compare.py run.
PatchCore, which builds its memory bank in one pass, is one point (its ``engine.fit`` time).
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

import compare
import compare_report
import compare_run
import contenders
from benchinfo import PLAIN_ENV_HELP, OutputExistsError, benchmark_env, claim_output, load_average, reexec_with_env, say
from lightning.pytorch import Callback

CURVE_MODELS = ("mambaadv2", "rd", "patchcore")
SHOWN = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
COLOURS = {"MambaADv2": "tab:red", "MambaADv2[default]": "tab:red", "ReverseDistillation": "tab:green",
           "Patchcore": "tab:blue"}  # fmt: skip
COLUMNS = ("model", "epoch", "steps", "train_s", "eval_s", *contenders.METRICS)


class CurvePoints(Callback):
    """Lightning callback: time each training epoch and score the test split after the chosen epochs."""

    def __init__(self, name: str, epochs: set[int]) -> None:
        """Args: model name (for the rows) and the 1-based epochs to score after."""
        super().__init__()
        self.name, self.epochs = name, epochs
        self.rows: list[dict[str, Any]] = []
        self.train_s = 0.0
        self._epoch_start = self._last_batch_end = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Start the epoch's clock."""
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        """The epoch ends with its last batch (validation, if any, is not training time)."""
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Add the epoch's time; score the test split if this epoch is one of the chosen."""
        self.train_s += self._last_batch_end - self._epoch_start
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        start = time.perf_counter()
        metrics = score_test_split(pl_module, trainer.datamodule)
        seconds = time.perf_counter() - start
        row = {"model": self.name, "epoch": epoch, "steps": trainer.global_step, "train_s": self.train_s}
        self.rows.append({**row, "eval_s": seconds, **metrics})
        say(f"    epoch {epoch}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN) + f" ({self.train_s:.0f} s)")


def score_test_split(module: Any, datamodule: Any) -> dict[str, float]:
    """The evaluator's test metrics of ``module``'s network (eval mode, raw scores) on the test split.

    Every submodule's train/eval flag and the random number generators are restored afterwards.
    """
    import numpy as np
    import torch

    modes = {m: m.training for m in module.modules()}
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    metrics = [copy.deepcopy(m) for m in module.evaluator.test_metrics]
    for metric in metrics:
        metric.reset()
    module.eval()
    try:
        with torch.no_grad():
            for batch in datamodule.test_dataloader():
                image, mask = module.pre_processor.transform(batch.image, batch.gt_mask)
                outputs = module.model(image.to(module.device))._asdict()
                batch.update(image=image, gt_mask=mask, **{k: v.cpu() for k, v in outputs.items() if v is not None})
                for metric in metrics:
                    metric.update(batch)
        return {metric.name: float(metric.compute()) for metric in metrics}
    finally:
        for m, training in modes.items():
            m.training = training
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
    """This script's options; the rest is compare.py's (data, encoder, settings)."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/learning_curve.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other options: those of benchmarks/compare.py (--mvtec, --categories, --epochs, --seed, --tiny, ...).",
    )
    parser.add_argument("--models", default=",".join(CURVE_MODELS), help="subset of %(default)s")
    parser.add_argument("--eval-epochs", type=int, nargs="+", help="epochs after which to score (default: every one)")
    parser.add_argument(
        "--variants", nargs="+", default=["default"], help="MambaADv2 variants of compare.py's ablation (default)"
    )
    parser.add_argument("--out", default="results/learning_curve", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing curve.csv")
    parser.add_argument("--plain-env", action="store_true", help=PLAIN_ENV_HELP)
    args, rest = parser.parse_known_args(argv)
    return parser, args, rest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the curve; returns ``{"rows": [...], "checks": {...}, "csv": path}``."""
    parser, args, rest = parse_args(argv)
    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(CURVE_MODELS):
        parser.error(f"--models must be a subset of {','.join(CURVE_MODELS)}, got {args.models!r}")
    unknown = [v for v in args.variants if v not in contenders.VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(contenders.VARIANTS)}")
    _, cargs = compare.parse_args(rest)
    settings = compare.resolve_settings(cargs)
    chosen = set(args.eval_epochs or range(1, settings.epochs + 1))
    if not chosen <= set(range(1, settings.epochs + 1)):
        parser.error(f"--eval-epochs must lie in 1..{settings.epochs} (the run's --epochs), got {sorted(chosen)}")
    out = Path(args.out)
    try:
        csv_path = claim_output(out / "curve.csv", args.overwrite)
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")

    compare_run.quiet_warnings()
    started, load_start = time.strftime("%Y-%m-%d %H:%M %Z"), load_average()
    spec = contenders.encoder_spec(cargs.backbone, cargs.backbone_weights, cargs.layers)
    source = compare_run.resolve_data(cargs, settings)
    state, _, probe = contenders.shared_encoder(spec, settings)
    rows: list[dict[str, Any]] = []
    checks: dict[str, float] = {}
    named = args.variants != ["default"]
    entries = [(f"MambaADv2[{v}]" if named else "MambaADv2", v) for v in args.variants if "mambaadv2" in models]
    entries += [(contenders.MODELS[key], None) for key in models if key != "mambaadv2"]
    for name, variant in entries:
        build = contenders.builder(spec, settings, name, variant)
        say(f"==> {name}")
        curve = CurvePoints(name, chosen) if name != "Patchcore" else None
        t = compare_run.train_and_test(
            name, build, source, source.categories, settings, state, probe, out / "runs" / name,
            cargs.accelerator, callbacks=[curve] if curve else [],
        )  # fmt: skip
        if curve is None:  # PatchCore: one point, its whole fit
            rows.append({"model": name, "epoch": 1, "steps": "", "train_s": t.train_s, "eval_s": t.test_s, **t.results})
            continue
        rows += curve.rows
        if curve.rows and curve.rows[-1]["epoch"] == settings.epochs:
            checks[name] = max(abs(curve.rows[-1][m] - t.results[m]) for m in contenders.METRICS)
    compare_report.write_csv(csv_path, rows, COLUMNS)
    info = {"started": started, "load": f"{load_start} → {load_average()}", "settings": settings, "spec": spec}
    write_markdown(out / "curve.md", rows, checks, info, compare_report.command_line(argv, "learning_curve.py"))
    make_chart(rows, out / "curve.png")
    say((out / "curve.md").read_text(encoding="utf-8"))
    return {"rows": rows, "checks": checks, "csv": csv_path}


def write_markdown(
    path: Path, rows: list[dict[str, Any]], checks: dict[str, float], info: dict[str, Any], command: str
) -> None:
    """The table of points, the consistency check and the run's settings."""
    s, spec = info["settings"], info["spec"]
    lines = [
        "# Learning curve",
        "",
        f"Run {info['started']} (load average {info['load']}) with:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"Image size {s.image_size}, epochs {s.epochs}, batch {s.batch_size}, seed {s.seed}, MambaADv2 depths "
        f"{list(s.depths)}; encoder `{spec.backbone}` ({', '.join(spec.layers)}), weights `{spec.weights}`. "
        "Train time: the training epochs so far, without the evaluations; PatchCore: its whole fit (one point).",
        "",
        "| model | epoch | steps | train (s) | image AUROC | image AUPR | pixel AUROC | pixel AUPR | pixel AUPRO |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        metrics = " | ".join(f"{r[m]:.4f}" for m in ("image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPR"))
        lines.append(f"| {r['model']} | {r['epoch']} | {r['steps'] or '–'} | {r['train_s']:.1f} | {metrics} | "
                     f"{r['pixel_AUPRO']:.4f} |")  # fmt: skip
    lines += ["", "Final check (last point against `engine.test` after the fit, largest |difference| of any metric): "]
    lines[-1] += ", ".join(f"{k} {v:.1e}" for k, v in checks.items()) or "no model reached its last epoch"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Three panels (image AUROC, pixel AUROC, AUPRO) against training seconds; PatchCore as a point and a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(SHOWN))
    for ax, metric in zip(axes, SHOWN, strict=True):
        for name in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == name]
            colour = COLOURS.get(name, "tab:orange" if "dropout" in name else "tab:purple")
            label = name.replace("ReverseDistillation", "Reverse Distillation")
            ax.plot([r["train_s"] for r in mine], [r[metric] for r in mine], "o-", color=colour, label=label)
            if name == "Patchcore":
                ax.axhline(mine[0][metric], color=colour, linestyle="--", linewidth=1)
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.set_xlabel("training wall time (s)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, format="png")


if __name__ == "__main__":
    reexec_with_env(benchmark_env(compare.ENV))
    sys.exit(0 if main() else 1)
