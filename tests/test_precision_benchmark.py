# SPDX-License-Identifier: Apache-2.0
"""benchmarks/precision_accuracy.py end to end at its smoke size: a fitted PatchCore in torch, f32, bf16 and INT8."""

import csv
import math

import pytest
import torch
from conftest import make_mvtec_like
from helpers import load_benchmark


@pytest.mark.slow
def test_precision_benchmark_tiny(tmp_path, capsys):
    bench = load_benchmark("precision_accuracy")
    out = tmp_path / "report"
    threads = torch.get_num_threads()
    args = ["--tiny", "--no-acq", "--models", "patchcore", "--threads", "2", "--repeats", "2", "2", "--out", str(out)]
    try:
        code = bench.main([*args, "--root", str(tmp_path / "embedded")])
    finally:
        torch.set_num_threads(threads)

    assert code == 0
    text = (out / "precision_accuracy.md").read_text(encoding="utf-8")
    assert text.strip() in capsys.readouterr().out  # printed as written
    with (out / "precision_accuracy.csv").open(encoding="utf-8") as handle:
        rows = {row["precision"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"torch", "f32", "bf16", "INT8_PTQ"}
    f32, int8 = rows["f32"], rows["INT8_PTQ"]
    assert f32["status"] == int8["status"] == "ok"
    # the f32 IR reproduces torch, and is the reference of every drop
    assert float(f32["max_abs_d_map"]) < 1e-3 and float(f32["max_abs_d_score"]) < 1e-3
    assert float(f32["drop_image_AUROC"]) == 0.0
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):  # the CSV keeps 6 digits
        drop = float(f32[metric]) - float(int8[metric])
        assert 0.0 <= float(int8[metric]) <= 1.0
        assert math.isclose(float(int8[f"drop_{metric}"]), drop, abs_tol=1e-5)
    assert int(int8["fake_quantize"]) > 0 and int(f32["fake_quantize"]) == 0  # the INT8 IR really is quantised
    assert int8["compiled_precision"] == "f32"  # the hint is forced: unquantised ops never run in the CPU's bf16
    for row in (f32, int8):
        assert float(row["latency_b1_ms"]) > 0 and float(row["throughput_b8"]) > 0
    bf16 = rows["bf16"]
    if bf16["status"] == "ok":  # only where OpenVINO lists BF16 among the CPU's capabilities
        assert bf16["compiled_precision"] == "bf16"
        assert float(bf16["max_abs_d_map"]) < 0.1  # 8 mantissa bits on maps in [0, 1]
    else:
        assert bf16["status"].startswith("not supported on this CPU")
    assert bench.main([*args, "--root", str(tmp_path / "embedded")]) == 2  # an earlier report is never replaced


@pytest.mark.slow
def test_precision_benchmark_on_a_local_mvtec_root(tmp_path):
    bench = load_benchmark("precision_accuracy")
    mvtec_root = make_mvtec_like(tmp_path / "mvtec", n_train=30)  # 10 % held out: INT8 calibrates on 3 images
    out = tmp_path / "report"
    threads = torch.get_num_threads()
    args = ["--tiny", "--no-acq", "--models", "patchcore", "--threads", "2", "--repeats", "2", "2"]
    try:
        code = bench.main([*args, "--mvtec", str(mvtec_root), "--categories", "tiles", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)

    assert code == 0
    text = (out / "precision_accuracy.md").read_text(encoding="utf-8")
    assert f"data: mvtec ({mvtec_root}), categories tiles" in text
    with (out / "precision_accuracy.csv").open(encoding="utf-8") as handle:
        rows = {row["precision"]: row for row in csv.DictReader(handle)}
    assert rows["f32"]["status"] == rows["INT8_PTQ"]["status"] == "ok"
    assert 0.0 <= float(rows["INT8_PTQ"]["image_AUROC"]) <= 1.0
