# SPDX-License-Identifier: Apache-2.0
"""benchmarks/learning_curve.py, tiny: a point per epoch, the final check, evaluations that leave training alone."""

import csv
import math

import pytest
import torch
from helpers import load_benchmark


@pytest.fixture(scope="module")
def curve():
    return load_benchmark("learning_curve")


def test_bad_options_are_refused(curve, tmp_path):
    with pytest.raises(SystemExit):
        curve.main(["--tiny", "--epochs", "2", "--eval-epochs", "3", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit):
        curve.main(["--tiny", "--models", "mambaadv2,unknown", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit):
        curve.main(["--tiny", "--variants", "default", "no-such-variant", "--out", str(tmp_path / "c")])
    out = tmp_path / "d"
    out.mkdir()
    (out / "curve.csv").write_text("an earlier run\n")
    with pytest.raises(SystemExit) as info:
        curve.main(["--tiny", "--out", str(out)])
    assert info.value.code == 2
    assert (out / "curve.csv").read_text() == "an earlier run\n"


@pytest.mark.slow
def test_tiny_curve(curve, tmp_path):
    threads = torch.get_num_threads()
    data = str(tmp_path / "data")
    try:
        result = curve.main(["--tiny", "--epochs", "2", "--root", data, "--out", str(tmp_path / "all"),
                             "--categories", "brick"])  # fmt: skip
        once = curve.main(["--tiny", "--epochs", "2", "--root", data, "--out", str(tmp_path / "last"),
                           "--categories", "brick", "--models", "mambaadv2", "--eval-epochs", "2"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    rows = result["rows"]
    assert [(r["model"], r["epoch"]) for r in rows] == [
        ("MambaADv2", 1), ("MambaADv2", 2), ("ReverseDistillation", 1), ("ReverseDistillation", 2), ("Patchcore", 1),
    ]  # fmt: skip
    for model in ("MambaADv2", "ReverseDistillation"):
        first, last = (r for r in rows if r["model"] == model)
        assert 0 < first["steps"] < last["steps"] and 0 < first["train_s"] < last["train_s"]
    for row in rows:
        assert all(math.isfinite(row[m]) and 0 <= row[m] <= 1 for m in curve.contenders.METRICS), row
    # the last point is what engine.test reports after the fit (raw scores rank as the normalised ones)
    assert set(result["checks"]) == {"MambaADv2", "ReverseDistillation"}
    assert all(diff < 1e-5 for diff in result["checks"].values()), result["checks"]
    # scoring after epoch 1 changed nothing in the training: epoch 2 is the same with or without it
    assert [r["epoch"] for r in once["rows"]] == [2]
    assert all(once["rows"][0][m] == rows[1][m] for m in curve.contenders.METRICS)

    with (tmp_path / "all" / "curve.csv").open(newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    text = (tmp_path / "all" / "curve.md").read_text(encoding="utf-8")
    assert "python benchmarks/learning_curve.py --tiny --epochs 2" in text and "Final check" in text
    assert (tmp_path / "all" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
