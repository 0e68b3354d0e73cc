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

Export goes through Anomalib's own path, ``model.to_onnx(root, input_size=(S, S), opset_version=18)`` (MambaADv2's
default opset; the others are asked for 18 too, rather than Anomalib's default 14, whose down-conversion fails
harmlessly on these graphs). The first export keeps Anomalib's default dynamic batch axis; if the exported graph's
batch dimension came out fixed anyway (PatchCore: fixed at 2), the model is exported again at a fixed batch of 1
(``dynamic_axes={}``) and of 8 (``dynamic_shapes=({0: 8},)``). The OpenVINO IR is made from that same ONNX file the
way ``model.to_openvino`` does it (``ov.convert_model`` + ``ov.save_model(compress_to_fp16=False)``), so the slow
MambaADv2 export runs once; a dynamic-batch IR is reshaped to the static batch before compiling. OpenVINO runs with
``{"INFERENCE_PRECISION_HINT": "f32"}`` and again with ``"bf16"``, both forced by hint whatever this CPU's default;
each row names the precision the compiled model reports (a CPU without bf16 support may run the bf16 hint in f32),
and the "max abs Δ" column is to be read against that precision (bf16 keeps 8 mantissa bits).

Timing: all (model, runtime) pairs are alternated within every repeat (the start rotates each repeat), after warm-up
calls (batch 1: two, batch 8: one; the first one's outputs are compared with torch eager); the table gives medians
and the interquartile range relative to the median. All runtimes use ``--threads`` threads (default: all cores). The
1-minute load average is printed before, during (per repeat) and after the measurements: on a shared machine the
absolute numbers are noisy, the side-by-side ratios less so.

Busy-waiting: by default torch runs with ``OMP_WAIT_POLICY=PASSIVE`` and ONNX Runtime with
``session.intra_op.allow_spinning=0``. With the libraries' spinning defaults, on a CPU that other jobs also use, a
thread pool that waits at every operator for a thread the kernel has descheduled collapses: MambaADv2's many small
operators ran 10–35× slower in torch eager with 2 threads than with 1 on a 2-core machine at load 4–5, which would
make any "exported vs torch" ratio meaningless. ``--spin`` keeps the libraries' defaults. (OpenVINO's TBB pool has no
such switch.)

The script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=1048576`` (PatchCore's coreset selection otherwise leaves
glibc holding freed temporaries until the process runs out of memory), ``OMP_WAIT_POLICY=PASSIVE`` (see above; not
with ``--spin``), ``HF_HUB_OFFLINE=1`` and ``TQDM_DISABLE=1``, each only where it is not already set. Output of the
noisy phases (fitting, export) goes to ``<workdir>/log.txt``. On 2 shared cores the MambaADv2 export alone took
about 5 minutes; a full run takes about 15 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchinfo import cpu_name, git_commit

ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
MODELS = {"mambaadv2": "MambaADv2", "rd": "ReverseDistillation", "patchcore": "Patchcore"}
TORCH, ORT, OV_F32, OV_BF16 = "torch eager", "ONNX Runtime", "OpenVINO f32", "OpenVINO bf16"
OV_HINTS = {OV_F32: "f32", OV_BF16: "bf16"}
BATCHES = (1, 8)


def reexec_with_env() -> None:
    """Restart the interpreter once with :data:`ENV` set (glibc and libgomp read theirs only at start-up)."""
    wanted = ENV if "--spin" in sys.argv else {**ENV, "OMP_WAIT_POLICY": "PASSIVE"}
    missing = {key: value for key, value in wanted.items() if key not in os.environ}
    if missing and not os.environ.get("_LATENCY_BENCH_REEXEC"):
        os.environ.update(missing, _LATENCY_BENCH_REEXEC="1")
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, *sys.argv])


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send stdout and stderr (Python and file descriptors 1/2) to ``log`` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        finally:
            handle.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def say(message: str) -> None:
    print(message, flush=True)


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
    from compare import default_layers

    return tuple(default_layers(backbone))


def build_mambaadv2(size: int, work: Path, args: argparse.Namespace) -> Any:
    from anomalib_mambaadv2 import MambaADv2

    layers = encoder_layers(args.backbone)
    return MambaADv2(backbone=args.backbone, layers=layers, pre_trained=False, image_size=size)


def build_rd(size: int, work: Path, args: argparse.Namespace) -> Any:
    from anomalib.models import ReverseDistillation

    if args.backbone != "resnet34":  # Anomalib's RD has decoders for ResNets only: compare.py's adapter
        from compare import Settings, encoder_spec
        from compare import build_rd as build_rd_adapted

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


def onnx_batch_dim(path: Path) -> int | str:
    """The exported graph's batch dimension: a name where it is dynamic, else its size."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_param or dim.dim_value


def export_onnx(module: Any, root: Path, size: int, batch: int | None) -> Path:
    """``module.to_onnx`` at ``size``; ``batch`` None keeps Anomalib's default dynamic batch axis."""
    kwargs: dict[str, Any] = {"opset_version": 18}
    if batch == 1:
        kwargs["dynamic_axes"] = {}
    elif batch is not None:
        kwargs["dynamic_shapes"] = ({0: batch},)
    return module.to_onnx(root, input_size=(size, size), **kwargs)


def onnx_to_ir(onnx_path: Path, root: Path) -> Path:
    """What ``to_openvino`` does after its ``to_onnx``: convert and save uncompressed (f32 weights)."""
    import openvino as ov

    root.mkdir(parents=True, exist_ok=True)
    xml = root / "model.xml"
    ov.save_model(ov.convert_model(onnx_path), xml, compress_to_fp16=False)
    return xml


def export_entry(entry: Entry, size: int, work: Path) -> None:
    base = work / entry.name
    start = time.perf_counter()
    first = export_onnx(entry.module, base / "dynamic", size, None)
    dim = onnx_batch_dim(first)
    if isinstance(dim, str):
        entry.dynamic = True
        entry.onnx = dict.fromkeys(BATCHES, first)
        entry.export = "dynamic batch"
    else:
        entry.notes.append(f"default (dynamic-batch) export fixed the batch at {dim}; re-exported at fixed batches")
        entry.onnx = {b: first if b == dim else export_onnx(entry.module, base / f"b{b}", size, b) for b in BATCHES}
        entry.export = "fixed batch, one export per batch"
    irs: dict[Path, Path] = {}
    for b, path in entry.onnx.items():
        if path not in irs:
            irs[path] = onnx_to_ir(path, path.parent.parent / "openvino")
        entry.ir[b] = irs[path]
    entry.export += f" ({time.perf_counter() - start:.0f} s)"


def ov_default_precision() -> str:
    import openvino as ov

    from anomalib_mambaadv2.deploy import precision_name

    return precision_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def make_runner(entry: Entry, runtime: str, batch: int, x: Any, threads: int, spin: bool) -> Callable[[], Any]:
    """A no-argument callable running one batch; it returns the outputs as {name: numpy array}."""
    import numpy as np
    import torch

    if runtime == TORCH:
        xt = torch.from_numpy(x)

        def run_torch() -> dict[str, Any]:
            with torch.inference_mode():
                out = entry.module(xt)
            return {k: v.numpy() for k, v in out._asdict().items() if isinstance(v, torch.Tensor)}

        return run_torch
    if runtime == ORT:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        session = ort.InferenceSession(str(entry.onnx[batch]), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        feed = {session.get_inputs()[0].name: x}
        return lambda: dict(zip(names, session.run(None, feed), strict=True))
    import openvino as ov

    from anomalib_mambaadv2.deploy import precision_name

    core = ov.Core()
    model = core.read_model(entry.ir[batch])
    if entry.dynamic:
        model.reshape([batch, *x.shape[1:]])
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": OV_HINTS[runtime]}
    compiled = core.compile_model(model, "CPU", config)
    entry.precision[runtime] = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()
    known = ("pred_score", "pred_label", "anomaly_map", "pred_mask")  # the compiled graph may rename, e.g. "amax"
    names = [next((n for n in known if n in o.get_names()), o.get_any_name()) for o in compiled.outputs]

    def run_ov() -> dict[str, Any]:
        result = request.infer({0: x})
        return {name: np.asarray(result[out]) for name, out in zip(names, compiled.outputs, strict=True)}

    return run_ov


def max_abs_diff(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    import numpy as np

    if key not in a or key not in b:
        return math.nan
    x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
    if x.size != y.size:
        return math.inf
    finite = np.isfinite(x) & np.isfinite(y.reshape(x.shape))
    if not finite.any():
        return math.nan
    return float(np.abs(x - y.reshape(x.shape))[finite].max())


def measure(
    runners: dict[tuple[str, str], Callable[[], Any]], repeats: int, warmups: int, loads: list[float], label: str
) -> dict[tuple[str, str], list[float]]:
    """Seconds per call for each runner; all runners alternate within each repeat, the start rotates."""
    keys = list(runners)
    for key in keys:
        for _ in range(warmups):
            runners[key]()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    gc.collect()
    for r in range(repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            runners[key]()
            times[key].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
        say(f"  {label}: repeat {r + 1}/{repeats}, load average {loads[-1]:.2f}")
    return times


def spread(values: list[float]) -> float:
    """Interquartile range relative to the median, in percent."""
    if len(values) < 2:
        return math.nan
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 100 * (q3 - q1) / statistics.median(values)


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ratio_line(
    label: str, times: dict[tuple[str, str], list[float]], num: tuple[str, str], den: tuple[str, str], target: float
) -> str:
    if num not in times or den not in times:
        return f"- {label}: n/a (not measured)"
    a, b = times[num], times[den]
    ratio = statistics.median(a) / statistics.median(b)
    paired = statistics.median(x / y for x, y in zip(a, b, strict=True))
    verdict = "PASS" if ratio <= target else "FAIL"
    return (
        f"- {label}: **{ratio:.2f}** (median of per-repeat paired ratios {paired:.2f}), target ≤ {target:.1f}: "
        f"**{verdict}**"
    )


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
    parser.add_argument("--coreset-ratio", type=float, help="PatchCore coreset ratio (default 0.05, --quick 0.01)")
    parser.add_argument("--workdir", type=Path, help="keep exports and the log here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args(argv)
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
    ov_default = ov_default_precision()
    runtimes = [TORCH, ORT, OV_F32, OV_BF16]

    entries: list[Entry] = []
    for name in args.model_names:
        entry = Entry(name)
        entries.append(entry)
        step = time.perf_counter()
        say(f"[{name}] building{' and fitting' if name == 'Patchcore' else ''} …")
        try:
            with quiet(log):
                entry.module = BUILDERS[name](args.size, work, args).eval()
            if name == "Patchcore":
                bank = tuple(entry.module.model.memory_bank.shape)
                entry.notes.append(f"memory bank {bank[0]}×{bank[1]} (coreset ratio {args.coreset_ratio})")
            say(f"[{name}] exporting (ONNX, then OpenVINO IR) … ({time.perf_counter() - step:.0f} s so far)")
            with quiet(log):
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
                    with quiet(log):
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
                        [max_abs_diff(reference, out, "anomaly_map"), max_abs_diff(reference, out, "pred_score")]
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
        ),
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
        ratio_line(
            "MambaADv2 OpenVINO / MambaADv2 torch eager", times[1], ("MambaADv2", OV_F32), ("MambaADv2", TORCH), 1.0
        ),
        ratio_line(
            "MambaADv2 OpenVINO / ReverseDistillation OpenVINO",
            times[1],
            ("MambaADv2", OV_F32),
            ("ReverseDistillation", OV_F32),
            1.0,
        ),
        "",
        "For reference, the same ratios of batch-8 time per call (not targets):",
        "",
        ratio_line(
            "batch 8, MambaADv2 OpenVINO / torch eager", times[8], ("MambaADv2", OV_F32), ("MambaADv2", TORCH), 1
        ),
        ratio_line(
            "batch 8, MambaADv2 OpenVINO / ReverseDistillation OpenVINO",
            times[8],
            ("MambaADv2", OV_F32),
            ("ReverseDistillation", OV_F32),
            1,
        ),
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
    reexec_with_env()
    sys.exit(main())
