# SPDX-License-Identifier: Apache-2.0
"""benchmarks/infer_memory.py on 300 images: RSS stays flat over batch inference, the report has its fields.

The runtimes run the benchmark's hand-made ONNX graph (``--tiny-graph``: the exported models' input and output
names, no network) so that no export is needed and the test takes seconds; the committed report
(``docs/benchmarks/infer_memory.md``) measures a real exported MambaADv2 over 2000 images.

The bound is loose on purpose: 50 MB is the issue's bound for 2000 images, and RSS also moves with things that are
not leaks (glibc arenas and fragmentation, library code paged in late, pytest's process holding torch and what
earlier tests left). To still catch a small per-image leak in 300 images, the fitted slope after warm-up is
extrapolated to 2000 images and held to the same 50 MB (that catches about 25 KB kept per image); the last test
checks that the measurement does see a leak.
"""

import re

import numpy as np
import pytest
from helpers import load_benchmark

pytestmark = pytest.mark.slow
BOUND_MB = 50.0


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("infer_memory")


def test_rss_flat_over_batch_inference(bench, tmp_path, capsys):
    out = tmp_path / "report" / "infer_memory.md"
    args = ["--tiny-graph", "--images", "300", "--warmup", "100", "--every", "25", "--workdir", str(tmp_path / "w")]
    assert bench.main([*args, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text in capsys.readouterr().out  # printed as written
    rows = re.findall(
        r"^\| (ONNX Runtime|OpenVINO) \| (\w+) \| (run|predict) \| ([0-9.]+) \| ([0-9.]+) \| ([+-][0-9.]+) "
        r"\| ([0-9.]+) \| ([+-][0-9.]+) \| ([0-9.]+) \|$",
        text,
        re.MULTILINE,
    )
    assert {(r[0], r[2]) for r in rows} == {(rt, m) for rt in ("ONNX Runtime", "OpenVINO") for m in ("run", "predict")}
    for runtime, precision, mode, warm, end, growth, peak, slope, speed in rows:
        assert precision == "f32", runtime  # OpenVINO runs with the f32 hint set explicitly
        assert float(end) - float(warm) == pytest.approx(float(growth), abs=0.11)
        assert float(growth) <= BOUND_MB, (runtime, mode, growth)
        assert float(slope) * (2000 - 100) / 1000 <= BOUND_MB, (runtime, mode, slope)
        assert float(peak) >= max(float(warm), float(end)) - 0.05 and float(speed) > 0
    assert "**PASS**: largest growth after warm-up" in text and "bound ≤ 50 MB" in text
    for needle in ("# Batch-inference memory over 300 images", "- git commit: ", "- CPU: ", "logical cores",
                   "onnxruntime ", "openvino ", "- model: hand-made ONNX graph", "- images: 300 PNG", "RGBA",
                   "I;16", "after the first 100 images", "- load average", "RSS trace", "Wall time"):  # fmt: skip
        assert needle in text, needle
    assert re.search(r"^- git commit: ([0-9a-f]{7,}( \+ uncommitted changes)?|unknown)", text, re.MULTILINE)
    assert len(list((tmp_path / "w" / "images").glob("*.png"))) == 300
    assert not list((tmp_path / "w").glob("predictions_*"))  # the overlays of each pass are removed

    # an existing report is kept unless --overwrite
    before = out.read_bytes()
    with pytest.raises(SystemExit) as err:
        bench.main([*args, "--out", str(out)])
    assert err.value.code == 2 and out.read_bytes() == before


def test_measurement_sees_a_leak(bench, tmp_path, monkeypatch):
    from anomalib_mambaadv2.deploy import ExportedModel

    bench.make_images(tmp_path / "images", 150)
    images = sorted((tmp_path / "images").glob("*.png"))
    models = bench.tiny_graph(tmp_path / "model")
    kept = []
    real_predict = ExportedModel.predict

    def leaky_predict(self, image):
        kept.append(np.ones(2**17))  # 1 MB per image, touched (np.zeros could stay unmapped)
        return real_predict(self, image)

    monkeypatch.setattr(ExportedModel, "predict", leaky_predict)
    m = bench.measure(models["onnxruntime"], images, tmp_path, "predict", every=10, warmup=50)
    assert m.images == 150 and m.precision == "f32"
    assert m.growth == pytest.approx(100, abs=15)  # 100 images after warm-up, 1 MB each
    assert m.slope == pytest.approx(1000, rel=0.15)
