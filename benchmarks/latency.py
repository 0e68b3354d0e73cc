# SPDX-License-Identifier: Apache-2.0
"""Deployment latency on the CPU: torch eager, ONNX Runtime and OpenVINO for MambaADv2, Reverse Distillation, PatchCore.

Usage::

    python benchmarks/latency.py                          # 256×256, batch 1 latency + batch 8 throughput (~10 min)
    python benchmarks/latency.py --quick                  # 128×128, fewer repeats, smaller PatchCore memory bank
    python benchmarks/latency.py --out results/latency.md # also write the markdown report
    python benchmarks/latency.py --models mambaadv2,rd    # a subset (mambaadv2, rd, patchcore)
    python benchmarks/latency.py --backbone tf_efficientnet_lite0   # every model on another encoder

Every model is the Anomalib (Lightning) module in eval mode: pre-processor + network + post-processor, exactly the
graph that Anomalib exports. Every model uses the ``--backbone`` encoder (default ``resnet34``; e.g.
``tf_efficientnet_lite0``, where Reverse Distillation gets ``compare.py``'s padded ResNet decoder) with
``pre_trained=False`` (no model hub is needed; latency does not depend on the weights). MambaADv2 and Reverse
Distillation are benchmarked untrained; PatchCore needs a memory bank, so it is fitted for one epoch on a small
generated dataset (``make_embedded_dataset``, category ``brick``, 16 training images); its memory bank is far smaller
than on a real dataset, so its nearest-neighbour search (and its latency) is understated.

Export goes through Anomalib's own path, ``model.to_onnx(root, input_size=(S, S), opset_version=18)`` (18 for every
model: Anomalib's default 14 down-converts with harmless failures here), keeping Anomalib's dynamic batch axis; where
the batch came out fixed anyway (PatchCore: at 2) the model is exported again at batch 1 and 8
(``runtimes.export_batches``). The OpenVINO IR comes from that ONNX file as in ``to_openvino`` (``ov.convert_model`` +
``ov.save_model(compress_to_fp16=False)``), so the slow MambaADv2 export runs once; a dynamic-batch IR is reshaped to
the static batch. OpenVINO runs with ``{"INFERENCE_PRECISION_HINT": "f32"}`` and ``"bf16"``, forced by hint whatever
the CPU's default; each row names the precision the compiled model reports (a CPU without bf16 may run the bf16 hint
in f32), and its "max abs Δ" is to be read against it (bf16 keeps 8 mantissa bits).

Timing: all (model, runtime) pairs are alternated within every repeat (the start rotates each repeat), after warm-up
calls (batch 1: two, batch 8: one; the first one's outputs are compared with torch eager); the table gives medians
and the interquartile range relative to the median. All runtimes use ``--threads`` threads (default: all cores). The
1-minute load average is printed before, during (per repeat) and after the measurements: on a shared machine the
absolute numbers are noisy, the side-by-side ratios less so.

Busy-waiting: by default torch runs with ``OMP_WAIT_POLICY=PASSIVE`` and ONNX Runtime with
``session.intra_op.allow_spinning=0``. With the spinning defaults, on a CPU that other jobs share, a pool waiting at
every operator for a descheduled thread collapses: MambaADv2's many small operators ran 10–35× slower in torch eager
with 2 threads than with 1 on 2 cores at load 4–5. ``--spin`` keeps the defaults (OpenVINO's TBB pool has no switch).

The script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=1048576`` (PatchCore's coreset selection otherwise leaves
glibc holding freed temporaries until the process runs out of memory), ``OMP_WAIT_POLICY=PASSIVE`` (see above; not
with ``--spin``), ``HF_HUB_OFFLINE=1`` and ``TQDM_DISABLE=1``, each only where it is not already set
(``--plain-env``: the last two only, and ``--spin``, as a plain process has it). Output of the
noisy phases (fitting, export) goes to ``<workdir>/log.txt``. On 2 shared cores the MambaADv2 export alone took
about 5 minutes; a full run takes about 15 minutes.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runtimes as rt
from benchinfo import PLAIN_ENV_HELP, benchmark_env, cpu_name, git_commit, reexec_with_env
from runtimes import fmt, measure, say, spread

ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
MODELS = {"mambaadv2": "MambaADv2", "rd": "ReverseDistillation", "patchcore": "Patchcore"}
TORCH, ORT, OV_F32, OV_BF16 = "torch eager", "ONNX Runtime", "OpenVINO f32", "OpenVINO bf16"
OV_HINTS = {OV_F32: "f32", OV_BF16: "bf16"}
BATCHES = (1, 8)


@dataclass
class Entry:
    """One model: its Lightning module, its exports and notes."""

    name: str
    module: Any = None
    onnx: dict[int, Path] = field(default_factory=dict)  # batch -> ONNX file
    ir: dict[int, Path] = field(default_factory=dict)  # batch -> OpenVINO IR
    dynamic: bool = False  # one export serves both batches
    export: str = ""
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # runtime -> reason
    precision: dict[str, str] = field(default_factory=dict)  # runtime -> inference precision it ran with


def encoder_layers(backbone: str) -> tuple[str, ...]:
    """The stride-4/8/16 feature modules of ``backbone`` (``benchmarks/compare.py``'s choice)."""
    from contenders import default_layers

    return tuple(default_layers(backbone))


def build_mambaadv2(size: int, work: Path, args: argparse.Namespace) -> Any:
    from anomalib_mambaadv2 import MambaADv2

    layers = encoder_layers(args.backbone)
    return MambaADv2(backbone=args.backbone, layers=layers, pre_trained=False, image_size=size)


def build_rd(size: int, work: Path, args: argparse.Namespace) -> Any:
    from anomalib.models import ReverseDistillation

    if args.backbone != "resnet34":  # Anomalib's RD has decoders for ResNets only: compare.py's adapter
        from contenders import Settings, encoder_spec
        from contenders import build_rd as build_rd_adapted

        return build_rd_adapted(encoder_spec(args.backbone, "none", None), Settings(image_size=size)).module
    pre = ReverseDistillation.configure_pre_processor(image_size=(size, size))
    return ReverseDistillation(backbone="resnet34", pre_trained=False, pre_processor=pre)


def build_patchcore(size: int, work: Path, args: argparse.Namespace) -> Any:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    from anomalib_mambaadv2.data import make_embedded_dataset

    root = make_embedded_dataset(
        work / "data", image_size=size, n_train=16, n_test_good=2, n_test_defect=4, categories=("brick",)
    )
    datamodule = MVTecAD(root=root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0, seed=0)
    model = Patchcore(
        backbone=args.backbone,
        layers=list(encoder_layers(args.backbone)[1:]),  # PatchCore's stride-8 and stride-16 layers
        pre_trained=False,
        coreset_sampling_ratio=args.coreset_ratio,
        pre_processor=Patchcore.configure_pre_processor(image_size=(size, size)),
    )
    engine = Engine(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        default_root_dir=work / "patchcore_run",
        enable_progress_bar=False,
        logger=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    return model


BUILDERS: dict[str, Callable[[int, Path, argparse.Namespace], Any]] = {
    "MambaADv2": build_mambaadv2,
    "ReverseDistillation": build_rd,
    "Patchcore": build_patchcore,
}


def export_entry(entry: Entry, size: int, work: Path) -> None:
    start = time.perf_counter()
    entry.onnx, how = rt.export_batches(entry.module, work / entry.name, size, BATCHES)
    entry.dynamic = how == "dynamic batch"
    entry.export = "dynamic batch" if entry.dynamic else "fixed batch, one export per batch"
    if not entry.dynamic:
        entry.notes.append(how)
    irs: dict[Path, Path] = {}
    for b, path in entry.onnx.items():
        if path not in irs:
            irs[path] = rt.onnx_to_ir(path, path.parent.parent / "openvino")
        entry.ir[b] = irs[path]
    entry.export += f" ({time.perf_counter() - start:.0f} s)"


def make_runner(entry: Entry, runtime: str, batch: int, x: Any, threads: int, spin: bool) -> Callable[[], Any]:
    """A no-argument callable running one batch; it returns the outputs as {name: numpy array}."""
    if runtime == TORCH:
        return rt.torch_runner(entry.module, x)
    if runtime == ORT:
        return rt.ort_runner(entry.onnx[batch], x, threads, spin)
    run, entry.precision[runtime] = rt.ov_runner(entry.ir[batch], batch, OV_HINTS[runtime], threads)
    return lambda: run(x)


def ratio_lines(times: dict[int, dict[tuple[str, str], list[float]]], batch: int, prefix: str) -> list[str]:
    """MambaADv2 OpenVINO f32 against its torch eager and against Reverse Distillation's OpenVINO f32."""
    label, mamba, t = f"{prefix}MambaADv2 OpenVINO / ", ("MambaADv2", OV_F32), times[batch]
    own = rt.ratio_line(label + ("" if prefix else "MambaADv2 ") + "torch eager", t, mamba, ("MambaADv2", TORCH), 1.0)
    return [own, rt.ratio_line(label + "ReverseDistillation OpenVINO", t, mamba, ("ReverseDistillation", OV_F32), 1.0)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 px, 3/2 repeats, coreset ratio 0.01")
    parser.add_argument("--size", type=int, help="square input size (default 256, --quick 128)")
    parser.add_argument("--repeats", type=int, nargs=2, metavar=("B1", "B8"), help="repeats at batch 1 and 8")
    parser.add_argument("--models", default="mambaadv2,rd,patchcore", help="comma-separated: mambaadv2, rd, patchcore")
    parser.add_argument("--backbone", default="resnet34", help="timm encoder of every model (default %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every runtime")
    parser.add_argument(
        "--spin",
        action="store_true",
        help="keep the libraries' busy-waiting thread pools (default: OMP_WAIT_POLICY=PASSIVE for torch, ORT "
        "allow_spinning=0), which collapse on a CPU shared with other jobs",
    )
    parser.add_argument("--plain-env", action="store_true", help=f"{PLAIN_ENV_HELP}; implies --spin")
    parser.add_argument("--coreset-ratio", type=float, help="PatchCore coreset ratio (default 0.05, --quick 0.01)")
    parser.add_argument("--workdir", type=Path, help="keep exports and the log here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args(argv)
    args.spin = args.spin or args.plain_env
    args.size = args.size or (128 if args.quick else 256)
    args.repeats = args.repeats or ((3, 2) if args.quick else (9, 3))
    args.coreset_ratio = args.coreset_ratio or (0.01 if args.quick else 0.05)
    unknown = [m for m in args.models.split(",") if m.strip() not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    args.model_names = [MODELS[m.strip()] for m in args.models.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    temp = None if args.workdir else tempfile.mkdtemp(prefix="latency_bench_")
    work = (args.workdir or Path(temp)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    load_start = os.getloadavg()
    say(f"latency benchmark: {args.size}×{args.size}, models {', '.join(args.model_names)}, log {log}")
    say(f"load average at start (1/5/15 min): {' / '.join(f'{v:.2f}' for v in load_start)}")

    import numpy as np
    import onnxruntime
    import openvino
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ov_default = rt.ov_default_precision()
    runtimes = [TORCH, ORT, OV_F32, OV_BF16]

    entries: list[Entry] = []
    for name in args.model_names:
        entry = Entry(name)
        entries.append(entry)
        step = time.perf_counter()
        say(f"[{name}] building{' and fitting' if name == 'Patchcore' else ''} …")
        try:
            with rt.quiet(log):
                entry.module = BUILDERS[name](args.size, work, args).eval()
            if name == "Patchcore":
                bank = tuple(entry.module.model.memory_bank.shape)
                entry.notes.append(f"memory bank {bank[0]}×{bank[1]} (coreset ratio {args.coreset_ratio})")
            say(f"[{name}] exporting (ONNX, then OpenVINO IR) … ({time.perf_counter() - step:.0f} s so far)")
            with rt.quiet(log):
                export_entry(entry, args.size, work)
            say(f"[{name}] {entry.export}")
        except Exception as error:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            with log.open("a", encoding="utf-8") as handle:
                traceback.print_exc(file=handle)
            say(f"[{name}] FAILED: {reason} (traceback in {log})")
            entry.notes.append(f"failed: {reason}")
            for runtime in runtimes[1:]:
                entry.errors[runtime] = "export failed"
            if entry.module is None:
                entry.errors[TORCH] = "build failed"

    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, 3, args.size, args.size), dtype=np.float32) for b in BATCHES}
    times: dict[int, dict[tuple[str, str], list[float]]] = {}
    diffs: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    for batch, repeats in zip(BATCHES, args.repeats, strict=True):
        runners: dict[tuple[str, str], Callable[[], Any]] = {}
        for entry in entries:
            for runtime in runtimes:
                if runtime in entry.errors:
                    continue
                try:
                    with rt.quiet(log):
                        runners[entry.name, runtime] = make_runner(
                            entry, runtime, batch, inputs[batch], args.threads, args.spin
                        )
                except Exception as error:
                    entry.errors[runtime] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    say(f"[{entry.name}] {runtime} batch {batch} FAILED: {entry.errors[runtime]}")
        # first (warm-up) call of every runner; its outputs check the exports against torch eager
        for entry in entries:
            reference = None
            for runtime in runtimes:
                if (entry.name, runtime) not in runners:
                    continue
                try:
                    out = runners[entry.name, runtime]()
                except Exception as error:
                    entry.errors[runtime] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    say(f"[{entry.name}] {runtime} batch {batch} FAILED: {entry.errors[runtime]}")
                    del runners[entry.name, runtime]
                    continue
                if runtime == TORCH:
                    reference = out
                elif reference is not None:
                    diffs.setdefault((entry.name, runtime), []).extend(
                        [rt.max_abs_diff(reference, out, "anomaly_map"), rt.max_abs_diff(reference, out, "pred_score")]
                    )
        say(f"measuring batch {batch}: {len(runners)} (model, runtime) pairs interleaved, {repeats} repeats")
        times[batch] = measure(runners, repeats, 1 if batch == 1 else 0, loads, f"batch {batch}")
    load_end = os.getloadavg()

    # ---- report ----
    elapsed = time.perf_counter() - wall
    lines = [
        f"# CPU latency at {args.size}×{args.size} ({args.backbone}, pre_trained=False)",
        "",
        f"- code: commit {git_commit()}",
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; threads per runtime: {args.threads}",
        f"- torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}, "
        f"Python {platform.python_version()}",
        f"- OpenVINO default inference precision on this CPU: {ov_default} (not used: both OpenVINO rows force "
        "their precision by hint; the last column says what each compiled model reports)",
        f"- repeats: batch 1 ×{args.repeats[0]}, batch 8 ×{args.repeats[1]}; all pairs interleaved, medians",
        "- thread pools: "
        + (
            "library defaults (spinning)"
            if args.spin
            else f"no busy-waiting (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, ORT allow_spinning=0)"
        )
        + f"; MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}",
        f"- load average (1 min): start {load_start[0]:.2f}, during {min(loads, default=math.nan):.2f}–"
        f"{max(loads, default=math.nan):.2f}, end {load_end[0]:.2f} (5/15 min at end: {load_end[1]:.2f} / "
        f"{load_end[2]:.2f})",
        f"- **numbers are noisy**: the CPU is shared with other jobs (load average above the {os.cpu_count()} cores "
        "means runnable work was waiting); compare the ratios, which are measured side by side, more than the "
        "absolute values"
        if max([load_start[0], *loads]) > 0.5 * (os.cpu_count() or 1)
        else "- the machine looked quiet (load average below half the cores); single-run numbers can still vary",
        "",
        "| model | runtime | batch-1 latency (ms) | IQR | batch-8 throughput (img/s) | IQR | "
        "max abs Δ vs torch (map / score) | export | precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        for runtime in runtimes:
            key = entry.name, runtime
            if runtime in entry.errors and all(key not in times[b] for b in BATCHES):
                lines.append(f"| {entry.name} | {runtime} | failed: {entry.errors[runtime]} | | | | | | |")
                continue
            t1, t8 = times[1].get(key), times[8].get(key)
            latency = statistics.median(t1) * 1000 if t1 else math.nan
            throughput = 8 / statistics.median(t8) if t8 else math.nan
            d = diffs.get(key, [])
            delta = "—" if runtime == TORCH else f"{fmt(max(d[0::2]), 6)} / {fmt(max(d[1::2]), 6)}" if d else "n/a"
            export = "" if runtime == TORCH else entry.export
            lines.append(
                f"| {entry.name} | {runtime} | {fmt(latency)} | {fmt(spread(t1 or []), 0)} % | {fmt(throughput, 2)} | "
                f"{fmt(spread(t8 or []), 0)} % | {delta} | {export} | {entry.precision.get(runtime, 'f32')} |"
            )
    lines += [
        "",
        "Ratios of batch-1 latency (OpenVINO with the f32 hint):",
        "",
        *ratio_lines(times, 1, ""),
        "",
        "For reference, the same ratios of batch-8 time per call (not targets):",
        "",
        *ratio_lines(times, 8, "batch 8, "),
        "",
        "Notes:",
        "",
        "- every row runs the full exported pipeline: pre-processing (resize + normalisation), network and "
        "post-processing (score normalisation, thresholds, mask); torch eager is the same Lightning module in eval "
        "mode",
        "- exports: `model.to_onnx(root, input_size=(S, S), opset_version=18)`; OpenVINO IR from the same ONNX file "
        "(as `to_openvino` does), a dynamic-batch IR reshaped to the static batch before compiling",
        "- IQR: interquartile range of the repeats relative to the median; max abs Δ: over batch 1 and 8, "
        "NaN entries (untrained post-processor statistics) ignored",
    ]
    lines += [f"- {entry.name}: {note}" for entry in entries for note in entry.notes]
    lines.append(f"- wall time of this run: {elapsed / 60:.1f} min")
    text = "\n".join(lines)
    print()
    print(text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    failed = any(entry.errors for entry in entries)
    if temp and not failed:
        shutil.rmtree(temp, ignore_errors=True)
    elif failed:
        print(f"\nsome steps failed; exports and log kept in {work}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    reexec_with_env(benchmark_env(ENV if "--spin" in sys.argv else {**ENV, "OMP_WAIT_POLICY": "PASSIVE"}))
    sys.exit(main())
