# SPDX-License-Identifier: Apache-2.0
"""Accuracy and speed per OpenVINO precision (f32, bf16, INT8) of MambaADv2, PatchCore and Reverse Distillation.

Usage::

    python benchmarks/precision_accuracy.py --out results/precision              # embedded textures, 128 px
    python benchmarks/precision_accuracy.py --tiny --out /tmp/precision          # smoke run: 64 px, 1 epoch
    python benchmarks/precision_accuracy.py --models mambaadv2 --ckpt model.ckpt --out results/precision_ckpt
    python benchmarks/precision_accuracy.py --mvtec datasets/MVTecAD --categories bottle --out results/precision_mvtec

Models, data, split, encoder (offline EfficientNet-Lite0), pre- and post-processing are ``benchmarks/compare.py``'s
(one multi-class model per method on the embedded textures, or on ``--mvtec`` / ``--visa`` categories with
``compare.py``'s real-data settings: 256 px, 20 epochs, depths 3-4-6-3). ``--ckpt`` tests a checkpoint instead of
training (one model, ``--models`` names its class; the data options must match its training). Each model is exported
once with ``model.to_onnx`` (as ``to_openvino`` does inside) and converted to an f32 IR; the precisions are:

* ``f32`` / ``bf16``: that IR compiled with ``INFERENCE_PRECISION_HINT`` f32 / bf16; bf16 only where OpenVINO lists
  BF16 among the CPU's ``OPTIMIZATION_CAPABILITIES`` (AVX512_BF16 or AMX), elsewhere the row says so.
* ``INT8_PTQ`` / ``INT8_ACQ``: ``model._compress_ov_model(ir, CompressionType.…, datamodule, metric, max_drop)``, the
  step ``to_openvino`` runs after converting, so a model's own hooks apply as with ``anomalib export
  --compression_type INT8_PTQ``: MambaADv2 gets ``anomalib_mambaadv2.quantize.Int8ExportMixin``'s (scoring head in
  f32), the peers Anomalib's. MambaADv2's extra row ``INT8_PTQ (Anomalib default)`` is Anomalib's unmodified
  ``ExportMixin._post_training_quantization_ov``. INT8 rows compile with the f32 hint (for the unquantised ops).
  ACQ: ``--acq-metric`` (default image AUROC) may drop by at most ``--max-drop`` (0.01).
* ``torch``: the Lightning module in eval mode, the reference of the ``max |Δ|`` column.

Quality: image AUROC, pixel AUROC and AUPRO on the test split (each image at batch 1), drop against OpenVINO f32.
Speed: batch-1 latency and batch-8 throughput, all (model, precision) pairs interleaved within each repeat after
warm-up, medians and interquartile ranges, ``--threads`` threads (default: all cores) for every compiled model.
Writes ``precision_accuracy.csv`` / ``.md`` to ``--out``; refuses to replace them without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compare
import compare_report
import compare_run
import contenders
from benchinfo import OutputExistsError, cpu_name, git_commit, load_average, reexec_with_env
from runtimes import (
    cpu_supports_bf16,
    export_batches,
    load_test_split,
    max_abs_diff,
    measure,
    metric_values,
    ov_runner,
    quiet,
    run_all,
    say,
    spread,
)

BATCHES = (1, 8)
F32, BF16, PTQ_STOCK, PTQ, ACQ = "f32", "bf16", "INT8_PTQ (Anomalib default)", "INT8_PTQ", "INT8_ACQ"
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
COLUMNS = (
    "model", "precision", "status", *METRICS, *(f"drop_{m}" for m in METRICS), "max_abs_d_map", "max_abs_d_score",
    "latency_b1_ms", "latency_b1_iqr_pct", "throughput_b8", "throughput_b8_iqr_pct", "compiled_precision",
    "fake_quantize", "quantise_s", "notes",
)  # fmt: skip


@dataclass
class Variant:
    """One (model, precision): its IRs per batch, the hint it compiles with, and what was measured."""

    model: str
    precision: str
    hint: str = "f32"
    irs: dict[int, Any] = field(default_factory=dict)  # batch -> ov.Model
    status: str = "ok"
    row: dict[str, Any] = field(default_factory=dict)


def acq_metric(name: str) -> Any:
    """The metric INT8_ACQ must keep within ``--max-drop``."""
    from anomalib.metrics import AUROC, F1Score

    return {
        "pixel_AUROC": lambda: AUROC(fields=["anomaly_map", "gt_mask"], strict=False),
        "image_AUROC": lambda: AUROC(fields=["pred_score", "gt_label"]),
        "image_F1Score": lambda: F1Score(fields=["pred_label", "gt_label"]),  # Anomalib's default
    }[name]()


def quantise(module: Any, ir: Any, precision: str, datamodule: Any, args: argparse.Namespace) -> Any:
    """INT8 through the model's own export step (``_compress_ov_model``), or Anomalib's unmodified PTQ."""
    from anomalib.deploy import CompressionType
    from anomalib.models.components.base.export_mixin import ExportMixin

    from anomalib_mambaadv2.quantize import match_static_batch

    match_static_batch(ir, datamodule)
    if precision == PTQ_STOCK:
        return ExportMixin._post_training_quantization_ov(ir, datamodule)
    kind = CompressionType.INT8_PTQ if precision == PTQ else CompressionType.INT8_ACQ
    return module._compress_ov_model(ir, kind, datamodule, acq_metric(args.acq_metric), None, args.max_drop)


def load_module(name: str, ckpt: Path) -> Any:
    """A checkpoint loaded with its class's ``load_from_checkpoint`` (MambaADv2's checks the file first)."""
    from anomalib.models import Patchcore, ReverseDistillation

    from anomalib_mambaadv2 import MambaADv2

    classes = {"MambaADv2": MambaADv2, "Patchcore": Patchcore, "ReverseDistillation": ReverseDistillation}
    return classes[name].load_from_checkpoint(ckpt, map_location="cpu")


def prepare_model(
    name: str, module: Any, datamodule: Any, args: argparse.Namespace, work: Path, log: Path
) -> tuple[list[Variant], list[Any]]:
    """Export, quantise and evaluate every precision of one model; returns its variants (torch first), test images."""
    import openvino as ov
    import torch

    module = module.cpu().eval()
    images, labels, masks = load_test_split(datamodule)

    def torch_run(x: Any) -> dict[str, Any]:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        return {"pred_score": out.pred_score.numpy(), "anomaly_map": out.anomaly_map.numpy()}

    reference = run_all(torch_run, images)
    size = images[0].shape[-1]
    variants = [Variant(name, "torch", row={**metric_values(*reference, labels, masks), "compiled_precision": "f32"})]
    start = time.perf_counter()
    with quiet(log):
        files, how = export_batches(module, work / name, size, BATCHES)
    variants[0].row["notes"] = f"export: {how}, {time.perf_counter() - start:.0f} s"
    say(f"[{name}] {variants[0].row['notes']}")
    f32 = {b: ov.convert_model(path) for b, path in files.items()}
    precisions = [F32, BF16, *([PTQ_STOCK] if name == "MambaADv2" else []), PTQ, *([] if args.no_acq else [ACQ])]
    for precision in precisions:
        variant = Variant(name, precision, hint=BF16 if precision == BF16 else F32)
        variants.append(variant)
        if precision == BF16 and not cpu_supports_bf16():
            variant.status = "not supported on this CPU (no BF16 in OPTIMIZATION_CAPABILITIES)"
            continue
        start = time.perf_counter()
        try:
            done: dict[int, Any] = {}  # one quantisation per distinct IR
            for batch, ir in f32.items():
                key = id(ir)
                if key not in done:
                    with quiet(log):
                        done[key] = ir if precision in {F32, BF16} else quantise(module, ir.clone(), precision,
                                                                                 datamodule, args)  # fmt: skip
                variant.irs[batch] = done[key]
            run, compiled = ov_runner(variant.irs[1], 1, variant.hint, args.threads)
            scores, maps = run_all(run, images)
        except Exception as error:
            variant.status = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            with log.open("a", encoding="utf-8") as handle:
                traceback.print_exc(file=handle)
            say(f"[{name}] {precision}: {variant.status}")
            continue
        fq = sum(op.get_type_name() == "FakeQuantize" for op in variant.irs[1].get_ops())
        variant.row = {
            **metric_values(scores, maps, labels, masks),
            "max_abs_d_map": max_abs_diff({"m": reference[1]}, {"m": maps}, "m"),
            "max_abs_d_score": max_abs_diff({"s": reference[0]}, {"s": scores}, "s"),
            "compiled_precision": compiled,
            "fake_quantize": fq,
            "quantise_s": time.perf_counter() - start if precision not in {F32, BF16} else math.nan,
        }
        say(f"[{name}] {precision}: " + ", ".join(f"{m} {variant.row[m]:.4f}" for m in METRICS) + f", FQ {fq}")
    base = next(v.row for v in variants if v.precision == F32)
    for v in variants:
        if v.row and base:
            v.row |= {f"drop_{m}": base.get(m, math.nan) - v.row[m] for m in METRICS}
    return variants, images


def time_variants(variants: list[Variant], images: Sequence[Any], args: argparse.Namespace) -> list[float]:
    """Batch-1 latency and batch-8 throughput of every variant with IRs, interleaved; returns the load averages."""
    import numpy as np

    loads: list[float] = []
    for batch, repeats in zip(BATCHES, args.repeats, strict=True):
        x = np.concatenate([images[i % len(images)] for i in range(batch)])
        runners = {}
        for v in variants:
            if v.status == "ok" and batch in v.irs:
                run, _ = ov_runner(v.irs[batch], batch, v.hint, args.threads)
                runners[v.model, v.precision] = lambda run=run, x=x: run(x)
        say(f"timing batch {batch}: {len(runners)} (model, precision) pairs interleaved, {repeats} repeats")
        times = measure(runners, repeats, 2 if batch == 1 else 1, loads, f"batch {batch}")
        for v in variants:
            t = times.get((v.model, v.precision))
            if t and batch == 1:
                v.row |= {"latency_b1_ms": 1000 * statistics.median(t), "latency_b1_iqr_pct": spread(t)}
            elif t:
                v.row |= {"throughput_b8": batch / statistics.median(t), "throughput_b8_iqr_pct": spread(t)}
    return loads


def cell(value: Any, digits: int = 4) -> str:
    """A table cell: numbers rounded, NaN/missing as n/a."""
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return "n/a" if value is None else str(value)


def markdown(variants: list[Variant], info: dict[str, Any]) -> str:
    """The report: header, one table row per (model, precision), notes."""
    lines = [
        "# Accuracy and speed per OpenVINO precision",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        f"- code: commit {git_commit()}; CPU: {cpu_name()}, {os.cpu_count()} logical cores; OpenVINO CPU "
        f"capabilities: {', '.join(info['caps'])}; {info['threads']} threads for every compiled model",
        f"- {info['versions']}",
        f"- data: {info['data']}; settings: {info['settings']}",
        f"- load average (1/5/15 min) at start {info['load_start']}, at end {info['load_end']}, during timing "
        f"{info['load_timing']} (above the core count: other work shared the CPU, times are inflated)",
        "",
        "| model | precision | image AUROC (drop) | pixel AUROC (drop) | AUPRO (drop) | max abs Δ vs torch "
        "(map / score) | latency b1 (ms, IQR) | throughput b8 (img/s, IQR) | FakeQuantize | quantise (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        r = v.row
        if v.status != "ok":
            lines.append(f"| {v.model} | {v.precision} | {v.status} | | | | | | | |")
            continue
        quality = [
            f"{cell(r.get(m))}" + ("" if v.precision in {"torch", F32} else f" ({r.get(f'drop_{m}', math.nan):+.4f})")
            for m in METRICS
        ]
        delta = "—" if v.precision == "torch" else f"{cell(r['max_abs_d_map'], 5)} / {cell(r['max_abs_d_score'], 5)}"
        speed = "— | —" if v.precision == "torch" else (
            f"{cell(r.get('latency_b1_ms'), 1)} ({cell(r.get('latency_b1_iqr_pct'), 0)} %) | "
            f"{cell(r.get('throughput_b8'), 2)} ({cell(r.get('throughput_b8_iqr_pct'), 0)} %)"
        )  # fmt: skip
        fq = "—" if v.precision == "torch" else cell(r.get("fake_quantize"))
        lines.append(
            f"| {v.model} | {v.precision} ({r.get('compiled_precision', 'f32')}) | " + " | ".join(quality)
            + f" | {delta} | {speed} | {fq} | {cell(r.get('quantise_s'), 0)} |"
        )  # fmt: skip
    lines += ["", "Notes:", ""] + [f"- {note}" for note in info["notes"]]
    lines.append(f"- wall time of this run: {info['wall_s'] / 60:.1f} min")
    return "\n".join(lines) + "\n"


NOTES = (
    "drop: OpenVINO f32 minus this precision (positive = worse); the precision in brackets is what the compiled "
    "model reports (INT8 rows run their unquantised ops in f32)",
    "max abs Δ: largest difference to torch eager over all test images of the normalised anomaly maps and scores "
    "(both in [0, 1], 0.5 = threshold)",
    "INT8_PTQ (Anomalib default): `ExportMixin._post_training_quantization_ov`, all of the graph; MambaADv2's "
    "INT8_PTQ / INT8_ACQ: `anomalib_mambaadv2.quantize` (anomaly map, blur and score normalisation kept in f32, "
    "element-wise and activation × activation ops not quantised); the peers' rows are Anomalib's own",
    "calibration: the validation split (Anomalib's PTQ); NNCF recommends ≥ 300 images, these splits have fewer",
    "INT8_ACQ: MambaADv2's measures the metric on the validation split (synthetic anomalies), the peers' (Anomalib's) "
    "on the test split, without resetting the metric between NNCF's evaluations, and it never passes `gt_mask` (an "
    "`ImageBatch` has no `in`), so pixel metrics cannot be used there",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for precision_accuracy.csv / .md")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    parser.add_argument("--tiny", action="store_true", help="64 px, 1 epoch, a few images: a smoke run")
    parser.add_argument(
        "--models", default="mambaadv2,patchcore,rd", help="comma-separated: " + ", ".join(contenders.MODELS)
    )
    parser.add_argument("--ckpt", type=Path, help="test this checkpoint instead of training (one model)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--mvtec", metavar="ROOT", help="local MVTec AD root (default: the embedded textures)")
    data.add_argument("--visa", metavar="ROOT", help="local VisA root (raw or Anomalib's visa_pytorch split)")
    parser.add_argument("--categories", nargs="+", help="categories of --mvtec / --visa (default: all)")
    parser.add_argument("--root", default="datasets/embedded", help="embedded-data cache folder (%(default)s)")
    parser.add_argument("--image-size", type=int, help="model input side (default 128, --tiny 64)")
    parser.add_argument("--epochs", type=int, help="MambaADv2 / RD epochs (default 20, --tiny 1)")
    parser.add_argument("--seed", type=int, help="seed (default 0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of every runtime")
    parser.add_argument("--repeats", type=int, nargs=2, metavar=("B1", "B8"), help="timing repeats (15 5; tiny 5 3)")
    parser.add_argument("--acq-metric", default="image_AUROC", choices=("image_AUROC", "pixel_AUROC", "image_F1Score"))
    parser.add_argument("--max-drop", type=float, default=0.01, help="INT8_ACQ: largest absolute metric drop")
    parser.add_argument("--no-acq", action="store_true", help="skip INT8_ACQ (NNCF ranks every quantised op: slow)")
    args = parser.parse_args(argv)
    args.model_names = [contenders.MODELS.get(m.strip().lower(), m) for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_names if m not in contenders.BUILDERS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(contenders.MODELS)}")
    if args.ckpt and len(args.model_names) != 1:
        parser.error("--ckpt needs exactly one model in --models (the checkpoint's class)")
    args.repeats = args.repeats or ((5, 3) if args.tiny else (15, 5))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 if any step failed)."""
    import anomalib
    import nncf
    import openvino as ov
    import torch

    args = parse_args(argv)
    try:
        csv_path = compare.claim_output(args.out, "precision_accuracy.csv", args.overwrite)
    except OutputExistsError as err:
        say(f"error: {err}")
        return 2
    compare_run.quiet_warnings()
    wall, load_start = time.perf_counter(), load_average()
    torch.set_num_threads(args.threads)
    given = {"image_size": args.image_size, "epochs": args.epochs, "seed": args.seed}
    base = contenders.TINY if args.tiny else contenders.REAL if (args.mvtec or args.visa) else contenders.EMBEDDED
    settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v})
    spec = contenders.encoder_spec("tf_efficientnet_lite0", "auto", None)
    data_args = argparse.Namespace(mvtec=args.mvtec, visa=args.visa, root=args.root, categories=args.categories)
    source = compare_run.resolve_data(data_args, settings)
    work, log = args.out / "work", args.out / "log.txt"
    work.mkdir(parents=True, exist_ok=True)
    encoder = contenders.reference_encoder(spec)
    state = {k: v.clone() for k, v in encoder.feature_extractor.state_dict().items()}
    probe_images = contenders.pre_processor(spec, settings.image_size)(contenders.model_input(settings))
    with torch.no_grad():
        probe = (probe_images, [f.clone() for f in encoder(probe_images)])
    variants: list[Variant] = []
    notes = list(NOTES)
    for name in args.model_names:
        say(f"[{name}] {'loading ' + str(args.ckpt) if args.ckpt else 'training'} …")
        if args.ckpt:
            module = load_module(name, args.ckpt)
        else:
            with quiet(log):
                trained = compare_run.train_and_test(
                    name, lambda name=name: contenders.BUILDERS[name](spec, settings), source, list(source.categories),
                    settings, state, probe, args.out / "runs" / name,
                )  # fmt: skip
            module = trained.built.module
            notes.append(f"{name}: trained in {trained.train_s:.0f} s; " + "; ".join(trained.built.notes))
        datamodule = source.datamodule(list(source.categories), settings)
        done, images = prepare_model(name, module, datamodule, args, work, log)
        variants += done
    loads = time_variants(variants, images, args)
    info = {
        "command": shlex.join(["python", "benchmarks/precision_accuracy.py", *(argv or sys.argv[1:])]),
        "caps": ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
        "threads": args.threads,
        "versions": f"torch {torch.__version__}, anomalib {anomalib.__version__}, openvino {ov.__version__}, "
        f"nncf {nncf.__version__}, Python {platform.python_version()}",
        "data": f"{source.kind} ({source.root}), categories {', '.join(source.categories)}",
        "settings": f"{settings.image_size} px, {settings.epochs} epoch(s), batch {settings.batch_size}, seed "
        f"{settings.seed}, MambaADv2 depths {list(settings.depths)}; ACQ: {args.acq_metric}, max_drop {args.max_drop}",
        "load_start": load_start,
        "load_end": load_average(),
        "load_timing": f"{min(loads, default=math.nan):.2f}–{max(loads, default=math.nan):.2f}",
        "notes": notes,
        "wall_s": time.perf_counter() - wall,
    }
    rows = [{"model": v.model, "precision": v.precision, "status": v.status, **v.row} for v in variants]
    compare_report.write_csv(csv_path, rows, COLUMNS)
    text = markdown(variants, info)
    (args.out / "precision_accuracy.md").write_text(text, encoding="utf-8")
    say("\n" + text)
    failed = any(v.status.startswith("failed") for v in variants)
    if not failed:
        shutil.rmtree(work, ignore_errors=True)  # the exports; the log stays
    return 1 if failed else 0


if __name__ == "__main__":
    reexec_with_env(compare.ENV)
    sys.exit(main())
