# SPDX-License-Identifier: Apache-2.0
"""Per-category thresholds of one multi-class model: calibration on validation, checkpoint, export, runtime, labels.

One tiny model is trained once (module fixture) on two categories, ``calm`` and ``noisy`` (tinted, extra noise), and
exported to ONNX once; the OpenVINO test converts that ONNX file through Anomalib's OpenVINO export path instead of
tracing the model a second time.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.models.components.base.export_mixin.mixin import ExportMixin
from conftest import make_mvtec_like
from PIL import Image

from anomalib_mambaadv2 import MambaADv2
from anomalib_mambaadv2.category_thresholds import (
    CHECKPOINT_KEY,
    CategoryCalibration,
    apply_thresholds,
    output_thresholds,
    to_output_space,
    write_thresholds_file,
)
from anomalib_mambaadv2.data import MultiClassMVTecAD
from anomalib_mambaadv2.deploy import CSV_NAME, THRESHOLDS_FILE, ExportedModel, main
from anomalib_mambaadv2.post_processor import SoftPostProcessor

SMALL = {"backbone": "resnet18", "pre_trained": False, "image_size": 64, "depths": [1, 1, 1, 1]}
CATEGORIES = ("calm", "noisy")
SPLIT_SEED = 0  # numpy seed of the synthetic split: both categories get anomalous validation images


def make_two_categories(root: Path) -> Path:
    """Two MVTec-layout categories; ``noisy`` is tinted (red mean ≈ 50/255) and much noisier."""
    make_mvtec_like(root, categories=CATEGORIES, n_train=10)
    rng = np.random.default_rng(1)
    for path in sorted((root / "noisy").rglob("*.png")):
        if "ground_truth" not in path.parts:
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) * [0.4, 0.7, 1.0]
            Image.fromarray(np.clip(pixels + rng.normal(0, 30, pixels.shape), 0, 255).astype(np.uint8)).save(path)
    return root


def is_noisy(image: torch.Tensor) -> bool:
    """The category of a (synthetic) validation image from its colour alone: independent of the code under test."""
    return float(image[0].mean()) < 0.3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("category_thresholds")
    root = make_two_categories(work / "data")
    torch.manual_seed(0)
    model = MambaADv2(**SMALL)
    dm = MultiClassMVTecAD(root=root, num_workers=0, train_batch_size=4, eval_batch_size=4, val_split_ratio=0.4)
    engine = Engine(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=work / "run", logger=False,
                    enable_progress_bar=False)  # fmt: skip
    np.random.seed(SPLIT_SEED)
    engine.fit(model=model, datamodule=dm)
    onnx_path = engine.export(model=model, export_type=ExportType.ONNX, export_root=work / "export")
    ckpt = Path(engine.trainer.checkpoint_callback.best_model_path)
    return SimpleNamespace(work=work, root=root, model=model.eval(), dm=dm, engine=engine, onnx=onnx_path, ckpt=ckpt)


@pytest.fixture(scope="module")
def predictions(trained):
    """Torch predictions of every test image: {path: (category, gt_label, score, label, anomaly_map, mask)}."""
    batches = trained.engine.predict(model=trained.model, datamodule=trained.dm)
    out = {}
    for batch in batches:
        for i, path in enumerate(batch.image_path):
            out[path] = SimpleNamespace(
                category=trained.dm.category_of(path),
                gt_label=bool(batch.gt_label[i]),
                score=float(batch.pred_score.reshape(-1)[i]),
                label=bool(batch.pred_label.reshape(-1)[i]),
                anomaly_map=batch.anomaly_map[i].reshape(64, 64).numpy(),
                mask=batch.pred_mask[i].reshape(64, 64).numpy(),
            )
    return out


def exported_table(trained) -> dict:
    return json.loads((trained.onnx.parent / THRESHOLDS_FILE).read_text())


def test_thresholds_differ_per_category_and_come_from_validation(trained):
    thresholds = trained.model.category_thresholds
    assert sorted(thresholds) == list(CATEGORIES)
    for category in CATEGORIES:  # the split seed gives both categories normal and anomalous validation images
        assert thresholds[category]["val_anomalous"] > 0 and thresholds[category]["val_images"] > 1, thresholds
    # recompute Anomalib's F1-adaptive threshold per category from the validation images alone, telling their
    # categories apart by colour (the synthetic anomalies lie in a temporary folder, outside every category)
    model = trained.model
    fields = {"image": ["pred_score", "gt_label"], "pixel": ["anomaly_map", "gt_mask"]}
    metrics = {(c, lv): F1AdaptiveThreshold(fields=f, strict=False) for c in CATEGORIES for lv, f in fields.items()}
    with torch.no_grad():
        for batch in trained.dm.val_dataloader():
            image, mask = model.pre_processor.transform(batch.image, batch.gt_mask)
            out = model.model(image)
            for i in range(len(image)):
                category = "noisy" if is_noisy(batch.image[i]) else "calm"
                part = SimpleNamespace(pred_score=out.pred_score[i : i + 1], gt_label=batch.gt_label[i : i + 1],
                                       anomaly_map=out.anomaly_map[i : i + 1], gt_mask=mask[i : i + 1])  # fmt: skip
                for level in ("image", "pixel"):
                    metrics[category, level].update(part)
    for (category, level), metric in metrics.items():
        assert thresholds[category][level] == pytest.approx(float(metric.compute()), abs=1e-6), (category, level)
    for level in ("image", "pixel"):
        assert thresholds["calm"][level] != pytest.approx(thresholds["noisy"][level], abs=1e-4), level
    # the export's JSON holds them mapped through the post-processor's normalisation (0.5 = global threshold)
    table = exported_table(trained)
    assert table["version"] == 1 and table["global"] == {"image": 0.5, "pixel": 0.5}
    assert table["normalisation"]["post_processor"] == "SoftPostProcessor"
    for category in CATEGORIES:
        for level in ("image", "pixel"):
            raw = thresholds[category][level]
            assert table["categories"][category][level] == to_output_space(raw, level, model.post_processor)
            assert table["categories"][category][f"{level}_source"] == "category"
            assert table["raw"][category][level] == raw
    assert to_output_space(float(model.post_processor.image_threshold), "image", model.post_processor) == 0.5


def test_checkpoint_round_trip_and_calibrated_f1(trained, predictions, tmp_path):
    expected = trained.model.category_thresholds
    assert torch.load(trained.ckpt, weights_only=True)[CHECKPOINT_KEY] == expected
    assert MambaADv2.load_from_checkpoint(trained.ckpt).category_thresholds == expected
    fresh = MambaADv2(**SMALL)
    assert fresh.category_thresholds == {}
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    results = engine.test(model=fresh, datamodule=trained.dm, ckpt_path=trained.ckpt)[0]
    assert fresh.category_thresholds == expected  # restored, and testing never recalibrates
    for category in CATEGORIES:  # F1 at the calibrated thresholds = F1 of the per-category torch labels
        items = [p for p in predictions.values() if p.category == category]
        tp = sum(p.label and p.gt_label for p in items)
        f1 = 2 * tp / (sum(p.label for p in items) + sum(p.gt_label for p in items))
        assert results[f"{category}/image_F1_calibrated"] == pytest.approx(f1, abs=1e-6)
        assert f"{category}/pixel_F1_calibrated" in results and f"{category}/image_F1Max" in results
    (csv_path,) = tmp_path.rglob("per_category_metrics.csv")
    header = next(csv.reader(csv_path.open()))
    assert header[header.index("image_F1Max") + 1] == "image_F1_calibrated"
    assert header[header.index("pixel_F1Max") + 1] == "pixel_F1_calibrated"


def test_torch_labels_follow_category_thresholds_and_match_onnx(trained, predictions):
    table = exported_table(trained)["categories"]
    runtimes = {c: ExportedModel(trained.onnx, category=c) for c in CATEGORIES}
    flipped = 0
    for path, torch_out in predictions.items():
        limits = table[torch_out.category]
        assert torch_out.label == (torch_out.score >= limits["image"])
        assert np.array_equal(torch_out.mask, torch_out.anomaly_map >= limits["pixel"])
        flipped += int(np.sum(torch_out.mask != (torch_out.anomaly_map > 0.5)))  # vs the global threshold
        out = runtimes[torch_out.category].predict(np.asarray(Image.open(path).convert("RGB")))
        assert np.abs(out["anomaly_map"] - torch_out.anomaly_map).max() <= 1e-4
        if abs(torch_out.score - limits["image"]) > 1e-4:  # an image exactly on the threshold may flip
            assert out["label"] == torch_out.label, path
        clear = np.abs(torch_out.anomaly_map - limits["pixel"]) > 1e-4
        assert np.array_equal(out["mask"][clear], torch_out.mask[clear]), path
    assert flipped > 0  # the per-category masks are not the global ones


def test_openvino_export_writes_thresholds(trained, tmp_path, monkeypatch):
    def reuse_onnx(self, export_root, model_file_name="model", input_size=None, **kwargs):
        del self, input_size, kwargs
        target = Path(export_root) / "reused"
        target.mkdir(parents=True)
        for f in trained.onnx.parent.glob("model.onnx*"):  # model.onnx and its external data model.onnx.data
            shutil.copy(f, target / f.name)
        return target / "model.onnx"

    monkeypatch.setattr(ExportMixin, "to_onnx", reuse_onnx)  # skip a second trace; the OpenVINO path is Anomalib's
    xml = trained.engine.export(model=trained.model, export_type=ExportType.OPENVINO, export_root=tmp_path)
    assert json.loads((xml.parent / THRESHOLDS_FILE).read_text()) == exported_table(trained)
    paths = sorted((trained.root / "calm" / "test").rglob("*.png"))[:3]
    onnx, openvino = ExportedModel(trained.onnx, category="calm"), ExportedModel(xml, category="calm")
    limit = exported_table(trained)["categories"]["calm"]["image"]
    for path in paths:
        a, b = (m.predict(np.asarray(Image.open(path).convert("RGB"))) for m in (onnx, openvino))
        assert np.abs(a["anomaly_map"] - b["anomaly_map"]).max() <= 1e-4
        assert a["label"] == b["label"] or abs(a["score"] - limit) < 1e-4


def test_unknown_or_missing_category_is_a_clear_error(trained, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown category 'metal'.*\['calm', 'noisy'\]"):
        ExportedModel(trained.onnx, category="metal")
    lone = tmp_path / "model.onnx"  # an export without category_thresholds.json
    lone.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no category_thresholds\.json.*multi-class.*leave out the category"):
        ExportedModel(lone, category="calm")
    images = trained.root / "calm" / "test" / "good"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "anomalib-mambaadv2"), "infer", "--model", str(trained.onnx), "--input",
         str(images), "--output", str(tmp_path / "out"), "--category", "metal", "--no-progress"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Unknown category 'metal'" in proc.stderr and "['calm', 'noisy']" in proc.stderr
    assert not (tmp_path / "out" / CSV_NAME).exists()


def test_infer_category_and_global_behaviour(trained, predictions, tmp_path):
    folder = trained.root / "noisy" / "test"
    assert main(["--model", str(trained.onnx), "--input", str(folder), "--output", str(tmp_path / "cat"),
                 "--category", "noisy", "--no-progress"]) == 0  # fmt: skip
    runtime, plain = ExportedModel(trained.onnx, category="noisy"), ExportedModel(trained.onnx)
    rows = {r["path"]: r["label"] for r in csv.DictReader((tmp_path / "cat" / CSV_NAME).open())}
    assert len(rows) == 6
    for rel, label in rows.items():
        array = np.asarray(Image.open(folder / rel).convert("RGB"))
        assert label == ("anomalous" if runtime.predict(array)["label"] else "normal")
        # no category: the exported graph's own (global) label, as before, and no mask
        out = plain.predict(array)
        assert set(out) == {"score", "label", "anomaly_map"}
        assert out["label"] == (out["score"] > 0.5)
    # torch without categories in the batches (a single-category datamodule): the post-processor's global labels
    single = MVTecAD(root=trained.root, category="calm", eval_batch_size=4, num_workers=0)
    batches = trained.engine.predict(model=trained.model, datamodule=single)
    for batch in batches:
        assert torch.equal(batch.pred_label.reshape(-1), batch.pred_score.reshape(-1) > 0.5)
        assert torch.equal(batch.pred_mask.reshape(-1), batch.anomaly_map.reshape(-1) > 0.5)


def test_fallback_to_global_threshold_is_recorded(tmp_path):
    post_processor = SoftPostProcessor()
    for name, value in {"image_min": 0.0, "image_max": 2.0, "_image_threshold": 1.0, "pixel_min": 0.0,
                        "pixel_max": 2.0, "_pixel_threshold": 0.8}.items():  # fmt: skip
        getattr(post_processor, name).fill_(value)
    both, normal_only = CategoryCalibration(), CategoryCalibration()
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[2:, :4] = True
    both.update(SimpleNamespace(pred_score=torch.tensor([0.2, 0.4, 1.5, 1.7]), gt_label=torch.tensor([0, 0, 1, 1]),
                                anomaly_map=masks[:, None].float() * 1.2 + 0.1, gt_mask=masks))  # fmt: skip
    normal_only.update(SimpleNamespace(pred_score=torch.tensor([0.3, 0.9]), gt_label=torch.tensor([0, 0]),
                                       anomaly_map=torch.rand(2, 1, 8, 8), gt_mask=torch.zeros(2, 8, 8)))  # fmt: skip
    thresholds = {"both": both.compute(), "normal_only": normal_only.compute()}
    assert thresholds["both"]["image"] == pytest.approx(1.5) and thresholds["both"]["pixel"] == pytest.approx(1.3)
    assert thresholds["normal_only"] == {"image": None, "pixel": None, "val_images": 2, "val_anomalous": 0}
    table = output_thresholds(thresholds, post_processor)
    assert table["normal_only"]["image"] == 0.5 and table["normal_only"]["image_source"] == "global"
    assert table["normal_only"]["pixel"] == 0.5 and table["normal_only"]["pixel_source"] == "global"
    assert table["both"]["image"] == pytest.approx(0.5 + 0.5 * 0.5 / 1.5)  # z = 2 (1.5 - 1) / 2 = 0.5
    assert table["both"]["image_source"] == "category"
    path = write_thresholds_file(tmp_path, thresholds, post_processor)
    assert json.loads(path.read_text())["categories"]["normal_only"]["image_source"] == "global"
    assert write_thresholds_file(tmp_path, {}, post_processor) is None  # no thresholds: a stale file goes
    assert not path.exists()
    # labels: calibrated categories follow their thresholds, other samples keep the post-processor's labels
    batch = SimpleNamespace(
        pred_score=torch.tensor([0.55, 0.55, 0.55]),
        pred_label=torch.tensor([True, True, False]),
        anomaly_map=torch.full((3, 1, 2, 2), 0.7),
        pred_mask=torch.zeros(3, 2, 2, dtype=torch.bool),
    )
    apply_thresholds(batch, ["both", None, "elsewhere"], table)
    assert batch.pred_label.tolist() == [False, True, False]  # "both": 0.55 < 0.667 (image), 0.7 >= 0.667 (pixel)
    assert batch.pred_mask.tolist() == [[[True, True], [True, True]], [[False] * 2] * 2, [[False] * 2] * 2]


def test_train_loss_is_logged_with_the_batch_size(monkeypatch):
    model = MambaADv2(**SMALL)
    calls = []
    monkeypatch.setattr(model, "log", lambda name, value, **kwargs: calls.append((name, kwargs)))
    model.training_step(ImageBatch(image=torch.rand(3, 3, 64, 64)))
    assert [(name, kwargs.get("batch_size"), kwargs.get("sync_dist")) for name, kwargs in calls] == [
        ("train_loss", 3, True)
    ]
