# SPDX-License-Identifier: Apache-2.0
"""The embedded texture dataset: MVTec layout, determinism, exact masks, caching and the overwrite rules."""

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_mambaadv2.data import (
    CATEGORIES,
    CHANGE_EPS,
    DEFECT_TYPES,
    MANIFEST_NAME,
    EmbeddedDatasetExistsError,
    make_embedded_dataset,
    render_defect_sample,
    render_normal_image,
)
from anomalib_mambaadv2.data import embedded as embedded_module

TINY = {"image_size": 64, "n_train": 4, "n_test_good": 2, "n_test_defect": 4}
PACKAGE = Path(embedded_module.__file__).resolve().parent


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_embedded_dataset(tmp_path_factory.mktemp("embedded"), **TINY)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tiny_root, tmp_path):
    again = files(make_embedded_dataset(tmp_path / "again", **TINY))
    assert again == files(tiny_root)
    other = files(make_embedded_dataset(tmp_path / "other", seed=1, **TINY))
    assert other.keys() == again.keys()
    images = [k for k in again if k.endswith(".png")]
    assert all(other[k] != again[k] for k in images if "ground_truth" not in k)


def test_mvtec_layout(tiny_root):
    assert sorted(p.name for p in tiny_root.iterdir() if p.is_dir()) == sorted(CATEGORIES)
    for category in CATEGORIES:
        base = tiny_root / category
        assert sorted(p.name for p in (base / "train" / "good").iterdir()) == [f"{i:03d}.png" for i in range(4)]
        assert sorted(p.name for p in (base / "test" / "good").iterdir()) == ["000.png", "001.png"]
        # n_test_defect=4 spreads one image over each defect type.
        assert sorted(p.name for p in (base / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
        for defect in DEFECT_TYPES:
            image = Image.open(base / "test" / defect / "000.png")
            mask = Image.open(base / "ground_truth" / defect / "000_mask.png")
            assert image.mode == "RGB" and image.size == (64, 64)
            assert mask.mode == "L" and mask.size == (64, 64)
            values = np.unique(np.asarray(mask))
            assert values.tolist() == [0, 255]
        for path in (base / "train" / "good").iterdir():
            image = Image.open(path)
            assert image.mode == "RGB" and image.size == (64, 64)


def test_defects_spread_evenly_over_types(tmp_path):
    root = make_embedded_dataset(
        tmp_path, image_size=32, n_train=1, n_test_good=1, n_test_defect=10, categories=["grass"]
    )
    counts = {d: len(list((root / "grass" / "test" / d).glob("*.png"))) for d in DEFECT_TYPES}
    assert counts == {"scratch": 3, "hole": 3, "foreign": 2, "stain": 2}
    assert not (root / "brick").exists()


def test_anomalib_mvtec_datamodule_reads_it(tiny_root):
    from anomalib.data import MVTecAD

    dm = MVTecAD(root=tiny_root, category="brick", num_workers=0, train_batch_size=2, eval_batch_size=2)
    dm.setup()
    assert len(dm.train_data) == 4
    samples = dm.test_data.samples
    assert len(samples) == 6
    assert (samples.label_index == 1).sum() == 4 and (samples.label_index == 0).sum() == 2
    assert samples.loc[samples.label_index == 1, "mask_path"].str.endswith("_mask.png").all()
    item = dm.test_data[int(np.flatnonzero(samples.label_index.to_numpy() == 1)[0])]
    assert item.image.shape == (3, 64, 64)
    assert item.gt_mask.shape == (64, 64) and item.gt_mask.any()
    assert item.gt_label


@pytest.mark.parametrize("category", CATEGORIES)
def test_masks_are_exactly_the_changed_pixels(category):
    for index, defect in enumerate(DEFECT_TYPES):
        sample = render_defect_sample(category, index, image_size=96, seed=3)
        assert sample.defect_type == defect
        diff = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(-1)
        np.testing.assert_array_equal(sample.mask, diff > 0)
        np.testing.assert_array_equal(sample.mask, diff > CHANGE_EPS)  # no invisible leftovers either
        assert 0.005 <= sample.mask.mean() <= 0.08, defect
        mean_change = np.abs(sample.image.astype(float) - sample.clean).mean(-1)[sample.mask].mean()
        assert mean_change >= 20, defect


def test_files_match_the_regenerated_samples(tiny_root):
    for category in CATEGORIES:
        base = tiny_root / category
        train, test_good = load(base / "train/good/003.png"), load(base / "test/good/001.png")
        np.testing.assert_array_equal(train, render_normal_image(category, "train", 3, 64))
        np.testing.assert_array_equal(test_good, render_normal_image(category, "test_good", 1, 64))
        for index, defect in enumerate(DEFECT_TYPES):
            sample = render_defect_sample(category, index, image_size=64)
            np.testing.assert_array_equal(load(base / "test" / defect / "000.png"), sample.image)
            np.testing.assert_array_equal(load(base / "ground_truth" / defect / "000_mask.png") > 0, sample.mask)


def test_second_call_reuses_the_cache(tmp_path):
    root = make_embedded_dataset(tmp_path, categories=["gravel"], **TINY)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_embedded_dataset(tmp_path, categories=["gravel"], **TINY) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_changed_parameters_need_overwrite(tmp_path):
    root = make_embedded_dataset(tmp_path / "ds", categories=["brick", "grass"], **TINY)
    (root / "notes.txt").write_text("user data")
    (root / "mine").mkdir()
    before = files(root)
    with pytest.raises(EmbeddedDatasetExistsError, match=r"overwrite=True") as err:
        make_embedded_dataset(root, categories=["brick"], **{**TINY, "image_size": 32})
    assert str(root) in str(err.value)
    assert files(root) == before  # nothing touched

    make_embedded_dataset(root, categories=["brick"], overwrite=True, **{**TINY, "image_size": 32})
    assert Image.open(root / "brick" / "train" / "good" / "000.png").size == (32, 32)
    assert not (root / "grass").exists()  # the old dataset's category folder is replaced
    assert (root / "notes.txt").read_text() == "user data" and (root / "mine").is_dir()
    assert '"image_size": 32' in (root / MANIFEST_NAME).read_text()


def test_never_writes_over_folders_it_did_not_create(tmp_path):
    (tmp_path / "grass").mkdir()
    (tmp_path / "grass" / "photo.png").write_bytes(b"user data")
    for overwrite in (False, True):
        with pytest.raises(EmbeddedDatasetExistsError, match="not created by"):
            make_embedded_dataset(tmp_path, categories=["grass"], overwrite=overwrite, **TINY)
    assert (tmp_path / "grass" / "photo.png").read_bytes() == b"user data"


def test_incomplete_dataset_is_regenerated(tmp_path):
    root = make_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    reference = files(root)
    (root / "brick" / "test" / "hole" / "000.png").unlink()
    make_embedded_dataset(root, categories=["brick"], **TINY)
    assert files(root) == reference


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unknown category"):
        render_normal_image("carpet", "train", 0)
    with pytest.raises(ValueError, match="image_size"):
        make_embedded_dataset("unused", image_size=8)


def test_cli_prints_path_and_counts(tmp_path, capsys):
    embedded_module.main(["--root", str(tmp_path / "cli"), "--size", "32", "--n-train", "2", "--n-test-good", "1"])
    out = capsys.readouterr().out
    assert str((tmp_path / "cli").resolve()) in out
    assert "train/good: 2" in out and "test/good: 1" in out and "test/scratch: 8" in out
    assert all(f"{c}:" in out for c in CATEGORIES)


def test_data_package_imports_no_model_module():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, path
                assert not (node.module or "").startswith("anomalib_mambaadv2"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("anomalib_mambaadv2") for a in node.names), path
