# SPDX-License-Identifier: Apache-2.0
"""benchmarks/seed_summary.py: mean ± sd over seeds from compare.py, ablation and learning-curve files."""

import csv
from pathlib import Path

import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def summary():
    return load_benchmark("seed_summary")


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_mean_and_sd_over_files_of_each_kind(summary, tmp_path):
    files = []
    for seed, value in enumerate((0.70, 0.80)):
        files.append(write(tmp_path / f"s{seed}" / "compare.csv", [
            {"model": "Patchcore", "category": "tire", "image_AUROC": 0.1, "train_s": 1},  # not the mean row
            {"model": "Patchcore", "category": "mean", "image_AUROC": value, "train_s": 100 + seed},
        ]))  # fmt: skip
    files.append(write(tmp_path / "abl" / "ablation.csv", [
        {"variant": "feature-dropout", "category": "mean", "image_AUROC": 0.75, "train_s": 50},
        {"variant": "default", "category": "mean", "image_AUROC": 0.4, "train_s": 40},  # the default is MambaADv2
    ]))  # fmt: skip
    files.append(write(tmp_path / "curve" / "curve.csv", [
        {"model": "Patchcore", "epoch": 1, "image_AUROC": 0.90, "train_s": 102},
        {"model": "MambaADv2", "epoch": 1, "image_AUROC": 0.2, "train_s": 10},
        {"model": "MambaADv2", "epoch": 2, "image_AUROC": 0.6, "train_s": 20},  # the last epoch counts
    ]))  # fmt: skip
    out = tmp_path / "table.md"
    text = summary.main([*map(str, files), "--metrics", "image_AUROC", "train_s", "--out", str(out)])
    assert out.read_text(encoding="utf-8") == text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert list(rows) == ["Patchcore", "MambaADv2[feature-dropout]", "MambaADv2"]
    assert "0.8000 ± 0.1000 (3)" in rows["Patchcore"] and "101 ± 1 (3)" in rows["Patchcore"]  # (0.7, 0.8, 0.9)
    assert "0.7500 (1)" in rows["MambaADv2[feature-dropout]"] and "0.5000 ± 0.1414 (2)" in rows["MambaADv2"]

    with pytest.raises(SystemExit) as info:  # an existing table is not replaced
        summary.main([str(files[0]), "--out", str(out)])
    assert info.value.code == 2 and out.read_text(encoding="utf-8") == text


def test_paired_difference_per_file(summary, tmp_path, capsys):
    files = [
        write(
            tmp_path / f"s{seed}" / "compare.csv",
            [
                {"model": "MambaADv2", "category": "mean", "image_AUROC": m},
                {"model": "Patchcore", "category": "mean", "image_AUROC": p},
            ],
        )
        for seed, (m, p) in enumerate(((0.90, 0.92), (0.96, 0.94), (0.93, 0.93)))
    ]
    files.append(
        write(tmp_path / "only" / "compare.csv", [{"model": "MambaADv2", "category": "mean", "image_AUROC": 0}])
    )
    text = summary.main([*map(str, files), "--metrics", "image_AUROC", "--paired", "MambaADv2", "Patchcore"])
    row = next(line for line in text.splitlines() if line.startswith("| image_AUROC"))
    # differences -0.02, +0.02, 0 over the three files with both: mean 0, sd 0.02, se 0.02 / sqrt(3)
    assert row == "| image_AUROC | +0.0000 ± 0.0200 (3) | 0.0115 | 2/3 |"
    with pytest.raises(SystemExit):
        summary.main([str(files[-1]), "--metrics", "image_AUROC", "--paired", "MambaADv2", "Patchcore"])
    assert "no file has both 'MambaADv2' and 'Patchcore'" in capsys.readouterr().err


def test_bad_input_is_named(summary, tmp_path, capsys):
    path = write(tmp_path / "compare.csv", [{"model": "RD", "category": "mean", "image_AUROC": 0.5}])
    with pytest.raises(SystemExit):
        summary.main([str(path), "--metrics", "pixel_AUPRO"])
    assert "has no column 'pixel_AUPRO'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        summary.main([str(tmp_path / "missing.csv")])
    assert "no such file" in capsys.readouterr().err
