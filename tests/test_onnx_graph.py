# SPDX-License-Identifier: Apache-2.0
"""ONNX graph optimisation (``onnx_graph.optimize_graph``): same outputs as the raw and exporter-optimised graphs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from anomalib_mambaadv2 import MambaADv2
from anomalib_mambaadv2.onnx_graph import optimize_graph

SMALL = {"backbone": "resnet18", "pre_trained": False, "image_size": 64, "depths": [1, 1, 1, 1]}
pytestmark = pytest.mark.slow


def _run(path, images: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images})


def _nodes(path) -> int:
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def test_folded_export_matches_raw_and_optimised_graphs(tmp_path):
    torch.manual_seed(0)
    model = MambaADv2(**SMALL).eval()
    folded = model.to_onnx(tmp_path / "folded")  # the default: exporter without optimisation, then optimize_graph
    raw = model.to_onnx(tmp_path / "raw", optimize=False)
    optimised = model.to_onnx(tmp_path / "optimised", optimize=True)  # the exporter's own (slow) optimisation
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images))  # pre-processing, network, post-processing: what is exported
    out = _run(folded, images)
    np.testing.assert_allclose(out[0].reshape(-1), expected.pred_score.numpy().reshape(-1), atol=1e-5)
    for other in (raw, optimised):
        for a, b in zip(out, _run(other, images), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert _nodes(folded) < 0.5 * _nodes(raw)  # the shape arithmetic is folded away
    assert _nodes(folded) <= 1.1 * _nodes(optimised)


def test_optimize_graph_keeps_external_data_layout(tmp_path):
    torch.manual_seed(0)
    path = MambaADv2(**SMALL).eval().to_onnx(tmp_path, optimize=False)
    data = path.with_name(path.name + ".data")
    had_data = data.exists()
    images = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    before = _run(path, images)
    optimize_graph(path)
    assert data.exists() == had_data
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name] + ([data.name] if had_data else []))
    for a, b in zip(before, _run(path, images), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
