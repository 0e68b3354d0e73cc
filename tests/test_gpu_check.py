# SPDX-License-Identifier: Apache-2.0
"""benchmarks/gpu_check.py on the CPU: the pure-PyTorch parts run at reduced size, the fused parts are reported."""

import re

import torch
from helpers import load_benchmark


def test_gpu_check_on_cpu(tmp_path, capsys):
    gpu_check = load_benchmark("gpu_check")
    out = tmp_path / "report" / "gpu_check.md"
    threads = torch.get_num_threads()
    try:
        code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)

    assert code == 0
    assert out.is_file()
    text = out.read_text(encoding="utf-8")
    assert capsys.readouterr().out == text  # printed as written
    assert re.search(r"commit.*[0-9a-f]{12}", text)

    # 1. environment
    assert "## 1. Environment" in text
    assert f"| torch | {torch.__version__}" in text

    # 2. parity table, with the float64 sanity rows passing
    assert "## 2. SSD parity" in text
    assert "| check | case | inputs | L | heads | batch | max abs diff | max rel diff |" in text
    sanity = [line for line in text.splitlines() if line.startswith("| torch vs ssd_reference (sanity)")]
    assert len(sanity) == 2, sanity
    for line in sanity:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "float64" and cells[9] == "PASS", line
        assert float(cells[7]) <= 1e-9, line

    # fused path: unavailable, with a reason, in the parity, speed and model sections
    assert re.search(r"\| fused SSD path \| unavailable \(.+\) \|", text)
    fused = [line for line in text.splitlines() if "unavailable (" in line]
    assert any(line.startswith("| torch vs fused") for line in fused)
    assert any(line.startswith("| fused |") for line in fused)
    assert "FAIL" not in text and "ERROR" not in text

    # 3. speed rows for the pure-PyTorch path
    speed = text.split("## 3. SSD speed", 1)[1].split("## 4.", 1)[0]
    rows = [line for line in speed.splitlines() if re.match(r"\| \d+ \|", line)]
    assert rows
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[3].split()[0]) > 0 and float(cells[6].split()[0]) > 0, line

    # 4. a model throughput row for the torch backend
    model = text.split("## 4. Model throughput", 1)[1]
    torch_row = next(line for line in model.splitlines() if line.startswith("| torch |"))
    cells = [c.strip() for c in torch_row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[4]) > 0, torch_row  # train and inference images/s
    assert "All checks that could run passed." in text


def test_gpu_check_requires_out(capsys):
    gpu_check = load_benchmark("gpu_check")
    try:
        gpu_check.main([])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--out should be required")
    assert "--out" in capsys.readouterr().err
