# SPDX-License-Identifier: Apache-2.0
"""benchmarks/model_cost.py at a small size: the table, the targets and the written report."""

import re

from helpers import load_benchmark


def test_model_cost_small(tmp_path, capsys):
    module = load_benchmark("model_cost")
    out = tmp_path / "report" / "model_cost.md"
    text = module.main(["--size", "64", "--quick", "--out", str(out)])
    assert out.read_text(encoding="utf-8") == text + "\n"
    assert text in capsys.readouterr().out
    assert re.search(r"code: commit [0-9a-f]{12}", text)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"MambaADv2", "MambaAD-like ablation", "ReverseDistillation"}
    cells = [c.strip() for c in rows["MambaADv2"].strip("|").split("|")]
    total, trainable, macs, b1, b8 = (float(c) for c in cells[1:])
    assert 15 < total < 22 and trainable < total  # resnet34 encoder is frozen
    assert 0.1 < macs < 9 and b1 > 0 and b8 > 0
    assert re.search(r"params \d+\.\d+ M \(target ≤ 22\): PASS", text)
    assert re.search(r"latency MambaADv2 / ReverseDistillation: batch 1 \d+\.\d+×, batch 8 \d+\.\d+×", text)
    assert "torch.compile" not in text  # only with --compile
    assert re.search(r"Allocator settings: MALLOC_MMAP_THRESHOLD_=\S+, MALLOC_TRIM_THRESHOLD_=\S+, LD_PRELOAD=", text)


def test_count_gmacs_counts_in_place_products():
    """The scan accumulates with ``baddbmm_``, which ``torch.utils.flop_counter`` alone does not count."""
    import torch

    benchinfo = load_benchmark("benchinfo")
    a, b, y = torch.randn(4, 8, 16), torch.randn(4, 16, 8), torch.randn(4, 8, 8)
    out_of_place = benchinfo.count_gmacs(lambda: torch.baddbmm(y, a, b))
    assert out_of_place == 4 * 8 * 16 * 8 / 1e9
    assert benchinfo.count_gmacs(lambda: y.clone().baddbmm_(a, b)) == out_of_place
    assert benchinfo.count_gmacs(lambda: y[0].clone().addmm_(a[0], b[0])) == out_of_place / 4
