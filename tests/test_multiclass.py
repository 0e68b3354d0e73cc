# SPDX-License-Identifier: Apache-2.0
"""Unified multi-class training: the union of categories, per-category results, CLI, export."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from conftest import make_mvtec_like

from anomalib_mambaadv2 import MambaADv2
from anomalib_mambaadv2.data import MultiClassFolder, MultiClassMVTecAD

SMALL = {"backbone": "resnet18", "pre_trained": False, "image_size": 64, "depths": [1, 2, 2, 1]}
CATEGORIES = ("tiles", "wood", "zinc")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_mvtec_like(tmp_path_factory.mktemp("multi"), categories=CATEGORIES, n_train=6)


def datamodule(root, **kwargs):
    return MultiClassMVTecAD(root=root, num_workers=0, train_batch_size=4, eval_batch_size=4, **kwargs)


def test_union_of_categories_is_trained_and_tested(root):
    dm = datamodule(root, categories="all")
    dm.setup()
    assert dm.categories == list(CATEGORIES)
    # synthetic validation split: 10 % of the normal training images are held out, the test set stays whole
    seen_train = {dm.category_of(p) for p in dm.train_data.samples.image_path}
    seen_test = {dm.category_of(p) for p in dm.test_data.samples.image_path}
    assert seen_train == seen_test == set(CATEGORIES)
    assert len(dm.test_data) == len(CATEGORIES) * 6
    assert len(dm.train_data) + len(dm.val_data.samples[dm.val_data.samples.label_index == 0]) >= 3 * 6 - 3
    subset = datamodule(root, categories=["wood", "zinc"])
    subset.setup()
    assert {subset.category_of(p) for p in subset.train_data.samples.image_path} == {"wood", "zinc"}


def test_bad_categories_and_roots_are_named(root, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown category \['metal'\].*valid: \['tiles', 'wood', 'zinc'\]"):
        datamodule(root, categories=["tiles", "metal"]).setup()
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        datamodule(tmp_path / "no_such_root").setup()
    empty = make_mvtec_like(tmp_path / "empty", categories=("full", "void"), n_train=2)
    for f in (empty / "void").rglob("*.png"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"'void' has no images"):
        datamodule(empty).setup()


def test_folder_layout(root):
    dm = MultiClassFolder(root=root, num_workers=0, train_batch_size=4, eval_batch_size=4)
    dm.setup()
    assert {dm.category_of(p) for p in dm.test_data.samples.image_path} == set(CATEGORIES)
    assert dm.test_data.samples.mask_path.str.len().gt(0).sum() == 3 * 3  # masks of the defect images


def test_per_category_results_table_and_export(root, tmp_path):
    torch.manual_seed(0)
    model = MambaADv2(**SMALL)
    engine = Engine(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                    enable_progress_bar=False)  # fmt: skip
    dm = datamodule(root)
    engine.fit(model=model, datamodule=dm)
    results = engine.test(model=model, datamodule=dm)[0]
    names = ["image_AUROC", "image_AUPR", "image_F1Max", "pixel_AUROC", "pixel_AUPR", "pixel_F1Max", "pixel_AUPRO"]
    for category in (*CATEGORIES, "mean"):
        for name in names:
            assert f"{category}/{name}" in results, f"{category}/{name} missing"
    for name in names:  # the mean is the mean of the category rows
        expected = sum(results[f"{c}/{name}"] for c in CATEGORIES) / len(CATEGORIES)
        assert results[f"mean/{name}"] == pytest.approx(expected, abs=1e-6)
    csv_files = list(Path(engine.trainer.default_root_dir).rglob("per_category_metrics.csv"))
    assert len(csv_files) == 1
    rows = list(csv.DictReader(csv_files[0].open()))
    assert [r["category"] for r in rows] == [*CATEGORIES, "mean"]
    assert float(rows[-1]["pixel_AUROC"]) == pytest.approx(results["mean/pixel_AUROC"], abs=1e-5)
    # a model trained this way exports like any other
    path = engine.export(model=model, export_type="torch", export_root=tmp_path / "export")
    assert path is not None and path.exists()


@pytest.mark.slow
def test_cli_multiclass(root, tmp_path):
    cmd = [
        str(Path(sys.executable).parent / "anomalib"), "train", "--model", "MambaADv2",
        "--model.backbone", "resnet18", "--model.pre_trained", "false", "--model.image_size", "64",
        "--model.depths", "[1, 2, 2, 1]", "--data", "anomalib_mambaadv2.data.MultiClassMVTecAD",
        "--data.root", str(root), "--data.categories", "all", "--data.num_workers", "0",
        "--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--trainer.max_epochs", "1",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| mean |" in proc.stdout
    assert list(tmp_path.rglob("per_category_metrics.csv"))
