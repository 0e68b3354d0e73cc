# SPDX-License-Identifier: Apache-2.0
"""benchmarks/latency.py end to end at a tiny size: a fitted PatchCore (fit, export, three runtimes, report)."""

import argparse
import re
import sys

import pytest
import torch
from helpers import load_benchmark


@pytest.mark.slow
def test_latency_benchmark_small(tmp_path, capsys):
    latency = load_benchmark("latency")
    out = tmp_path / "report" / "latency.md"
    threads = torch.get_num_threads()
    try:
        code = latency.main(
            ["--quick", "--size", "64", "--repeats", "2", "2", "--models", "patchcore", "--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)

    assert code == 0
    text = out.read_text(encoding="utf-8")
    assert text.strip() in capsys.readouterr().out  # printed as written
    assert "# CPU latency at 64×64" in text
    assert re.search(r"- code: commit [0-9a-f]{12}", text)
    rows = {}
    for runtime in ("torch eager", "ONNX Runtime", "OpenVINO f32", "OpenVINO bf16"):
        cells = r"([0-9.]+) \| [0-9]+ % \| ([0-9.]+) \| [0-9]+ % \| (.*?) \| .*? \| (\w+)"  # latency … precision
        row = re.search(rf"^\| Patchcore \| {runtime} \| {cells} \|$", text, re.MULTILINE)
        assert row, f"Patchcore / {runtime} row missing:\n{text}"
        assert float(row[1]) > 0 and float(row[2]) > 0
        rows[runtime] = row
    # every row names the precision it ran with; the hints are forced, whatever the CPU's default
    assert [rows[r][4] for r in ("torch eager", "ONNX Runtime", "OpenVINO f32")] == ["f32"] * 3
    assert rows["OpenVINO bf16"][4] in {"bf16", "f32"}  # a CPU without bf16 may compile the hint as f32
    # exported graphs agree with torch eager (untrained weights, same module) within what their precision keeps:
    # f32 to 1e-3; bf16 (8 mantissa bits, ~0.4 % per rounding) to 0.1 on maps in [0, 1] (measured: 0.012-0.024)
    for runtime, row in rows.items():
        if runtime == "torch eager":
            continue
        bound = 0.1 if row[4] == "bf16" else 1e-3
        deltas = [float(v) for v in re.findall(r"[0-9.]+", row[3])]
        assert deltas and max(deltas) < bound, (runtime, row[3], row[4])
    assert "load average (1 min): start" in text
    assert "MambaADv2 OpenVINO / MambaADv2 torch eager: n/a (not measured)" in text
    assert "memory bank" in text


def test_backbone_option_puts_every_model_on_that_encoder(tmp_path):
    module = load_benchmark("latency")
    args = argparse.Namespace(backbone="tf_efficientnet_lite0", coreset_ratio=0.1)
    mamba = module.build_mambaadv2(64, tmp_path, args).eval()
    rd = module.build_rd(64, tmp_path, args).eval()
    assert mamba.model.encoder.backbone == "tf_efficientnet_lite0"
    assert list(mamba.model.encoder.layers) == ["blocks.1", "blocks.2", "blocks.4"]
    assert "efficientnet" in type(rd.model.encoder.inner.feature_extractor).__name__.lower()
    with torch.no_grad():
        for model in (mamba, rd):
            assert model(torch.rand(1, 3, 64, 64)).anomaly_map.shape[-2:] == (64, 64)


def test_plain_env_spins_and_keeps_the_allocator_defaults():
    """``--plain-env``: the libraries' own (spinning) thread pools and glibc's own allocator thresholds."""
    module = load_benchmark("latency")
    assert module.parse_args(["--plain-env"]).spin and not module.parse_args([]).spin
    plain = sys.modules["benchinfo"].benchmark_env(module.ENV, plain=True)
    assert "MALLOC_MMAP_THRESHOLD_" in module.ENV and "MALLOC_MMAP_THRESHOLD_" not in plain
