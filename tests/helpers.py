# SPDX-License-Identifier: Apache-2.0
"""Shared test helpers.

:func:`export_and_compare` exports a module with the dynamo ONNX exporter and checks that ONNX Runtime and OpenVINO
reproduce the eager PyTorch outputs; :func:`load_benchmark` imports a script of ``benchmarks/`` by path. Import them
from a test module as ``from helpers import export_and_compare`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch
from torch import Tensor, nn


def _flatten(output: Any) -> list[Tensor]:
    """Tensors of a (nested) module output in the order the ONNX exporter lists them."""
    if isinstance(output, Tensor):
        return [output]
    if output is None:  # e.g. the unset fields of Anomalib's InferenceBatch; the exporter drops them too
        return []
    if isinstance(output, Mapping):
        return [t for value in output.values() for t in _flatten(value)]
    if isinstance(output, (tuple, list)):  # NamedTuples included
        return [t for item in output for t in _flatten(item)]
    msg = f"unsupported module output type {type(output).__name__}; expected tensors in tuples, lists or dicts."
    raise TypeError(msg)


def _max_diff(runtime: str, expected: list[Tensor], actual: list[np.ndarray]) -> float:
    """Largest absolute difference over all outputs, after checking their number and shapes."""
    assert len(actual) == len(expected), f"{runtime}: {len(actual)} outputs, torch gives {len(expected)}"
    diff = 0.0
    for i, (ref, out) in enumerate(zip(expected, actual, strict=True)):
        ref_np = ref.detach().cpu().numpy()
        out = np.asarray(out)
        assert out.shape == ref_np.shape, f"{runtime}: output {i} has shape {out.shape}, torch gives {ref_np.shape}"
        if ref_np.size:
            diff = max(diff, float(np.max(np.abs(out.astype(np.float64) - ref_np.astype(np.float64)))))
    return diff


def export_and_compare(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    tmp_path: Path,
    atol: float = 1e-4,
) -> dict[str, float]:
    """Export ``module`` to ONNX and check ONNX Runtime and OpenVINO against eager PyTorch.

    The module is put in eval mode and exported with ``torch.onnx.export(..., dynamo=True, opset_version=18)`` to
    ``tmp_path / "model.onnx"`` (large weights may land in ``model.onnx.data`` beside it). The file is then run on the
    CPU in ONNX Runtime and in OpenVINO; OpenVINO is asked for f32 inference because on bf16-capable CPUs it defaults
    to bf16. Every output (a tensor, or the tensors of a tuple / NamedTuple / list / dict, flattened in order) is
    compared with PyTorch's.

    Args:
        module: Module to export; switched to eval mode.
        inputs: Positional tensor inputs of ``module.forward``.
        tmp_path: Directory to write the ONNX file to (pytest's ``tmp_path``).
        atol: Largest allowed absolute difference per runtime.

    Returns:
        ``{"onnxruntime": diff, "openvino": diff}``, the largest absolute difference over all outputs.

    Raises:
        AssertionError: If a runtime differs from PyTorch by more than ``atol`` or returns other outputs.
    """
    module.eval()
    with torch.no_grad():
        expected = _flatten(module(*inputs))

    path = tmp_path / "model.onnx"
    torch.onnx.export(module, inputs, str(path), dynamo=True, opset_version=18, verbose=False)
    feeds = [t.detach().cpu().numpy() for t in inputs]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(feeds), f"onnxruntime: the model takes {len(names)} inputs, {len(feeds)} were given"
    ort_out = session.run(None, dict(zip(names, feeds, strict=True)))

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    ov_out = [result[output] for output in compiled.outputs]

    diffs = {
        "onnxruntime": _max_diff("onnxruntime", expected, ort_out),
        "openvino": _max_diff("openvino", expected, ov_out),
    }
    for runtime, diff in diffs.items():
        assert diff <= atol, f"{runtime}: max abs diff {diff:.3g} to PyTorch exceeds atol={atol:g}"
    return diffs


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as module ``<name>_benchmark``."""
    if str(BENCHMARKS) not in sys.path:  # the scripts import their shared helpers (benchinfo) as siblings
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
