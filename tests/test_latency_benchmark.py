# SPDX-License-Identifier: Apache-2.0
"""benchmarks/latency.py end to end at a tiny size: a fitted PatchCore (fit, export, three runtimes, report)."""

import re

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
    for model in ("Patchcore",):
        for runtime in ("torch eager", "ONNX Runtime", "OpenVINO f32"):
            row = re.search(rf"^\| {model} \| {runtime} \| ([0-9.]+) \| [0-9]+ % \| ([0-9.]+) \|", text, re.MULTILINE)
            assert row, f"{model} / {runtime} row missing:\n{text}"
            assert float(row[1]) > 0 and float(row[2]) > 0
    # exported graphs agree with torch eager (untrained weights, same module)
    for delta in re.findall(r"\| ([0-9.]+) / ([0-9.]+|n/a) \|", text):
        assert float(delta[0]) < 1e-3
    assert "load average (1 min): start" in text
    assert "MambaADv2 OpenVINO / MambaADv2 torch eager: n/a (not measured)" in text
    assert "memory bank" in text
