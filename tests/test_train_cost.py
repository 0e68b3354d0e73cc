# SPDX-License-Identifier: Apache-2.0
"""benchmarks/train_cost.py at its smallest: the report has its rows, finite positive figures, and is kept.

One encoder (resnet18), 64×64 (the smallest size MambaADv2 takes with stride-16 features: a multiple of 32, at
least 64), batch 2, one timed step and no warm-up, so each configuration's child process takes about ten seconds on
two cores. Nothing here checks a time or a ratio against a target: the benchmark reports those, a test must not.
"""

import math
import re

import pytest
from helpers import load_benchmark

pytestmark = pytest.mark.slow
ARGS = ["--quick", "--size", "64", "--batch", "2", "--warmup", "0", "--steps", "1", "--encoders", "resnet18"]
ROW = re.compile(
    r"^\| (?P<model>[^|]+?) \| resnet18 \| 2 \| 64 \| (?P<time>[0-9.]+) \| (?P<ips>[0-9.]+) \| (?P<peak>[0-9.]+) \| "
    r"(?P<growth>[0-9.]+) \| (?P<ratio>—|[0-9.]+× / [0-9.]+×) \|$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("train_cost")


def test_quick_report_and_no_overwrite(bench, tmp_path, capsys):
    out = tmp_path / "report" / "train_cost.md"
    rc = bench.main([*ARGS, "--out", str(out)])
    assert rc in {0, 1}  # 1: a target failed, which is the report's business, not the test's
    text = out.read_text(encoding="utf-8")
    assert text in capsys.readouterr().out

    expected = {bench.MAMBA, bench.RD, bench.CKPT}
    rows = {m["model"]: m for m in ROW.finditer(text)}
    assert set(rows) == expected, text
    for model, row in rows.items():
        seconds, peak, growth = float(row["time"]), float(row["peak"]), float(row["growth"])
        assert math.isfinite(seconds) and seconds > 0, model
        assert float(row["ips"]) == pytest.approx(2 / seconds, rel=0.02, abs=0.01), model
        assert math.isfinite(peak) and peak > 0 and 0 <= growth <= peak, model
        assert (row["ratio"] == "—") == (model == bench.RD), model

    verdicts = re.findall(r"^- (.+), resnet18: (step time|peak RSS) [0-9.]+×.*: \*\*(PASS|FAIL)\*\*$", text, re.M)
    kinds = ("step time", "peak RSS")
    assert {(m, k) for m, k, _ in verdicts} == {(m, k) for m in expected - {bench.RD} for k in kinds}
    assert rc == (0 if all(v == "PASS" for *_, v in verdicts) else 1)
    for needle in ("# Training cost: MambaADv2 vs Reverse Distillation", "python benchmarks/train_cost.py --quick",
                   "- code: commit ", "- CPU: ", "torch threads 2", "MALLOC_MMAP_THRESHOLD_=", "- load average",
                   "AdamW over", "Adam over", "- activation checkpointing: ", "wall time"):  # fmt: skip
        assert needle in text, needle

    # an existing report is kept unless --overwrite
    before = out.read_bytes()
    with pytest.raises(SystemExit) as err:
        bench.main([*ARGS, "--out", str(out)])
    assert err.value.code == 2 and out.read_bytes() == before


def test_plain_env_children_keep_the_allocator_and_thread_waiting_defaults(bench, monkeypatch):
    """``--plain-env``: the children get no MALLOC_MMAP_THRESHOLD_ / OMP_WAIT_POLICY (unless the caller set them)."""
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(kwargs["env"])
        raise RuntimeError("stop")  # only the environment matters here

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    for key in ("MALLOC_MMAP_THRESHOLD_", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(key, raising=False)
    for flags in ([], ["--plain-env"], ["--plain-env", "--glibc-defaults"]):  # the flags overlap: both at once work
        _, args = bench.parse_args([*ARGS, *flags])
        with pytest.raises(RuntimeError, match="stop"):
            bench.run_child((bench.MAMBA, "resnet18"), args)
    tuned, plain, both = seen
    assert both == plain
    assert tuned["MALLOC_MMAP_THRESHOLD_"] == "1048576" and tuned["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "MALLOC_MMAP_THRESHOLD_" not in plain and "OMP_WAIT_POLICY" not in plain
    assert plain["HF_HUB_OFFLINE"] == "1"
