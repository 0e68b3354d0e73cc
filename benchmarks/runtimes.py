# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the deployment benchmarks (``latency.py``, ``precision_accuracy.py``).

Exporting through Anomalib's ``to_onnx`` at fixed or dynamic batch, compiling OpenVINO models with an explicit
precision hint and thread count, interleaved timing, comparisons with torch, and Anomalib's image AUROC, pixel AUROC
and AUPRO of a runtime's outputs on a test split.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchinfo import interleaved_times, say

_LOGS: dict[Path, Any] = {}  # open log files of quiet()
OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask")  # a compiled graph may rename, e.g. "amax"


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send stdout and stderr (Python and file descriptors 1/2) to ``log`` for the duration.

    The log stays open for the life of the process: loggers created inside (Lightning's, NNCF's) keep writing to it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    handle = _LOGS.get(log) or _LOGS.setdefault(log, log.open("a", encoding="utf-8"))
    saved = os.dup(1), os.dup(2)
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


def ov_default_precision() -> str:
    import openvino as ov

    from anomalib_mambaadv2.deploy import precision_name

    return precision_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


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
    """Seconds per call for each runner, interleaved (:func:`benchinfo.interleaved_times`); logs the load."""

    def log_load(r: int) -> None:
        loads.append(os.getloadavg()[0])
        say(f"  {label}: repeat {r + 1}/{repeats}, load average {loads[-1]:.2f}")

    return interleaved_times(runners, repeats, warmups, log_load)


def spread(values: list[float]) -> float:
    """Interquartile range relative to the median, in percent."""
    if len(values) < 2:
        return math.nan
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 100 * (q3 - q1) / statistics.median(values)


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def export_batches(module: Any, root: Path, size: int, batches: tuple[int, ...]) -> tuple[dict[int, Path], str]:
    """ONNX files serving each of ``batches``, and how they were made.

    The first export keeps Anomalib's dynamic batch axis; where the graph's batch came out fixed anyway (PatchCore:
    fixed at 2), the model is exported again at each fixed batch.
    """
    first = export_onnx(module, root / "dynamic", size, None)
    dim = onnx_batch_dim(first)
    if isinstance(dim, str):
        return dict.fromkeys(batches, first), "dynamic batch"
    files = {b: first if b == dim else export_onnx(module, root / f"b{b}", size, b) for b in batches}
    return files, f"the dynamic-batch export fixed the batch at {dim}; exported again at each fixed batch"


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin lists BF16 among its optimisation capabilities (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ov_runner(model: Any, batch: int, hint: str, threads: int) -> tuple[Callable[[Any], dict[str, Any]], str]:
    """Compile ``model`` (an ``ov.Model`` or IR path; a dynamic batch is reshaped to ``batch``) on the CPU.

    The precision hint and the thread count are always given, never left to the machine's defaults.

    Returns:
        A callable mapping an input array to ``{output name: array}``, and the precision the compiled model reports.
    """
    import numpy as np
    import openvino as ov

    from anomalib_mambaadv2.deploy import precision_name

    core = ov.Core()
    model = core.read_model(model) if isinstance(model, str | Path) else model.clone()
    shape = model.input(0).get_partial_shape()
    if not shape[0].is_static:
        model.reshape([batch, *(d.get_length() for d in list(shape)[1:])])
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    names = [next((n for n in OUTPUT_NAMES if n in o.get_names()), o.get_any_name()) for o in compiled.outputs]

    def run(x: Any) -> dict[str, Any]:
        result = request.infer({0: x})
        return {name: np.asarray(result[out]) for name, out in zip(names, compiled.outputs, strict=True)}

    return run, precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))


def metric_values(scores: Any, maps: Any, labels: Any, masks: Any) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO (Anomalib's metrics) of stacked scores, maps and targets."""
    import torch
    from anomalib.data import ImageBatch
    from anomalib.metrics import AUPRO, AUROC

    batch = ImageBatch(
        image=torch.zeros(len(labels), 3, 1, 1),
        gt_label=torch.as_tensor(labels),
        gt_mask=torch.as_tensor(masks),
        pred_score=torch.as_tensor(scores).reshape(-1),
        anomaly_map=torch.as_tensor(maps),
    )
    metrics = {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"], strict=False),
        "pixel_AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"], strict=False),
    }
    for metric in metrics.values():
        metric.update(batch)
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def load_test_split(datamodule: Any) -> tuple[list[Any], Any, Any]:
    """Test images (one (1, 3, H, W) array each), labels and masks."""
    import torch

    datamodule.setup("test")
    images, labels, masks = [], [], []
    for batch in datamodule.test_dataloader():
        images += [image[None].numpy() for image in batch.image]
        labels.append(batch.gt_label)
        masks.append(batch.gt_mask)
    return images, torch.cat(labels), torch.cat(masks)


def run_all(fn: Callable[[Any], dict[str, Any]], images: Sequence[Any]) -> tuple[Any, Any]:
    """Stacked scores and anomaly maps of ``fn`` over the images."""
    import numpy as np

    outs = [fn(x) for x in images]
    return np.concatenate([o["pred_score"].reshape(-1) for o in outs]), np.concatenate([o["anomaly_map"] for o in outs])


def ratio_line(
    label: str, times: dict[tuple[str, str], list[float]], num: tuple[str, str], den: tuple[str, str], target: float
) -> str:
    """A report line: the ratio of two medians (and of paired repeats) against a target."""
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


def torch_runner(module: Any, x: Any) -> Callable[[], dict[str, Any]]:
    """A callable running ``module`` (eval mode, inference mode) on the array ``x``; outputs as numpy arrays."""
    import torch

    xt = torch.from_numpy(x)

    def run() -> dict[str, Any]:
        with torch.inference_mode():
            out = module(xt)
        return {k: v.numpy() for k, v in out._asdict().items() if isinstance(v, torch.Tensor)}

    return run


def ort_runner(path: Path, x: Any, threads: int, spin: bool) -> Callable[[], dict[str, Any]]:
    """A callable running an ONNX file in ONNX Runtime on ``x``: ``threads`` intra-op threads, spinning if ``spin``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {session.get_inputs()[0].name: x}
    return lambda: dict(zip(names, session.run(None, feed), strict=True))
