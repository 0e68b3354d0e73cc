# SPDX-License-Identifier: Apache-2.0
"""The end-to-end demo (``make demo``): every step at a tiny size, the report, and the no-silent-overwrite rule."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from anomalib_mambaadv2 import demo

CATEGORIES = ("brick", "grass", "gravel")
HEADER = "| category | " + " | ".join(demo.METRICS) + " |"
ROW = r"\| {name} \|" + r" (\d\.\d{{4}}) \|" * len(demo.METRICS)


def fake_predictions(n_per_category=5, size=32, seed=0):
    rng = np.random.default_rng(seed)
    categories, types, labels = [], [], []
    for category in CATEGORIES:
        for i in range(n_per_category):
            defect = ["good", "hole", "scratch", "stain", "foreign"][i % 5]
            categories.append(category)
            types.append(defect)
            labels.append(int(defect != "good"))
    n = len(categories)
    masks = np.zeros((n, size, size), bool)
    masks[np.asarray(labels) == 1, 8:16, 8:16] = True
    return demo.Predictions(
        images=rng.random((n, 3, size, size), dtype=np.float32),
        masks=masks,
        labels=np.asarray(labels),
        categories=categories,
        defect_types=types,
        scores=rng.random(n).astype(np.float32),
        maps=rng.random((n, size, size), dtype=np.float32),
    )


def test_settings_presets_and_overrides():
    parser = demo._parser()
    assert demo._settings(parser.parse_args([])) == demo.FULL
    tiny = demo._settings(parser.parse_args(["--tiny", "--epochs", "2", "--depths", "1", "2", "2", "1"]))
    assert (tiny.image_size, tiny.epochs, tiny.depths) == (demo.TINY.image_size, 2, (1, 2, 2, 1))
    full = demo._settings(parser.parse_args(["--image-size", "160", "--seed", "3"]))
    assert (full.image_size, full.seed, full.epochs) == (160, 3, demo.FULL.epochs)
    with pytest.raises(SystemExit):
        demo.main(["--image-size", "100", "--out", "unused"])


def test_existing_report_is_never_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("an earlier run\n")
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(SystemExit) as info:
        demo.main(["--tiny", "--root", str(tmp_path / "data"), "--out", str(out)])
    assert info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "an earlier run\n"
    assert not (tmp_path / "data").exists()  # refused before doing anything
    # --overwrite removes the demo's own outputs only
    (out / "export").mkdir()
    (out / "grid.png").write_bytes(b"old")
    demo._claim_output(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_metric_table_and_grid(tmp_path):
    results = {f"{c}/{m}": 0.5 + 0.1 * k for k, c in enumerate((*CATEGORIES, "mean")) for m in demo.METRICS}
    table = demo.metric_table(results, CATEGORIES)
    assert table.splitlines()[0] == HEADER
    assert re.search(ROW.format(name=r"\*\*mean\*\*"), table)
    pred = fake_predictions()
    chosen = demo.grid_samples(pred, per_category=4)
    assert len(chosen) == 12 and all(pred.labels[i] == 1 for i in chosen)
    assert {pred.defect_types[i] for i in chosen} == {"hole", "scratch", "stain", "foreign"}
    demo.make_grid(pred, tmp_path / "grid.png", per_category=4)
    with Image.open(tmp_path / "grid.png") as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 600


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--tiny", "--root", str(tmp_path / "data"), "--out", str(out)]
    info = demo.main(args)

    # the report: settings, times, the per-category table with its mean row, parity, the grid
    report = (out / "report.md").read_text()
    assert HEADER in report
    for category in CATEGORIES:
        assert re.search(ROW.format(name=category), report), category
    mean = re.search(ROW.format(name=r"\*\*mean\*\*"), report)
    assert mean, report
    for value, metric in zip(mean.groups(), demo.METRICS, strict=True):
        assert float(value) == pytest.approx(info["results"][f"mean/{metric}"], abs=6e-5)
    for step in ("Dataset", "Training", "Test", "Export to OpenVINO", "OpenVINO inference", "**total**"):
        assert step in report
    assert "![" in report and "(grid.png)" in report

    with Image.open(out / "grid.png") as image:
        image.verify()
        assert image.format == "PNG"

    # the exported OpenVINO model was run on every test image and compared with PyTorch
    parity = info["parity"]
    assert parity["images"] == len(CATEGORIES) * (demo.TINY.n_test_good + demo.TINY.n_test_defect)
    assert parity["passed"], parity
    assert 0 <= parity["max_abs_diff_score"] <= demo.PARITY_ATOL
    assert 0 <= parity["max_abs_diff_map"] <= demo.PARITY_ATOL
    assert "## PyTorch vs OpenVINO" in report and "**pass**" in report
    assert (out / "export" / "weights" / "openvino" / "model.xml").is_file()
    assert json.loads((out / "metrics.json").read_text())["parity"] == parity
    assert len(info["steps"]) == 6

    # a second run into the same folder refuses and leaves the report alone
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        demo.main(args)
    assert refused.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "report.md").read_text() == report
