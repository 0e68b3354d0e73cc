# SPDX-License-Identifier: Apache-2.0
"""Deployment: parity of torch, ONNX Runtime and OpenVINO on a trained model; batch inference command."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from PIL import Image

from anomalib_mambaadv2 import MambaADv2
from anomalib_mambaadv2.deploy import CSV_NAME, OVERLAY_DIR, ExportedModel, main

SMALL = {"backbone": "resnet18", "pre_trained": False, "image_size": 64, "depths": [1, 2, 2, 1]}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(mvtec_root, tmp_path_factory):
    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("deploy")
    model = MambaADv2(**SMALL)
    engine = Engine(max_epochs=2, accelerator="cpu", devices=1, default_root_dir=work, logger=False,
                    enable_progress_bar=False)  # fmt: skip
    dm = MVTecAD(root=mvtec_root, category="tiles", train_batch_size=4, eval_batch_size=4, num_workers=0, seed=0)
    engine.fit(model=model, datamodule=dm)
    onnx_path = engine.export(model=model, export_type=ExportType.ONNX, export_root=work / "onnx")
    # f32 IR from the same ONNX file (what Anomalib's OpenVINO export does), and Anomalib's FP16-compressed export
    xml_path = work / "ov_f32" / "model.xml"
    ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)
    fp16_path = engine.export(
        model=model,
        export_type=ExportType.OPENVINO,
        export_root=work / "ov_fp16",
        compression_type=CompressionType.FP16,
    )
    return model.eval(), onnx_path, xml_path, fp16_path


def images(mvtec_root):
    paths = sorted((mvtec_root / "tiles" / "test").rglob("*.png"))
    return paths, [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_torch_onnx_openvino_parity(exported, mvtec_root):
    model, onnx_path, xml_path, fp16_path = exported
    _, arrays = images(mvtec_root)
    runtimes = {
        "onnxruntime": ExportedModel(onnx_path),
        "openvino_f32": ExportedModel(xml_path, precision="f32"),
        "openvino_fp16_weights": ExportedModel(fp16_path, precision="f32"),
        "openvino_bf16": ExportedModel(xml_path, precision="bf16"),  # forced: the result must not depend on the CPU
    }
    assert runtimes["openvino_f32"].precision == "f32"
    assert runtimes["openvino_bf16"].precision in {"bf16", "f32"}  # a CPU without bf16 may compile the hint as f32
    assert runtimes["onnxruntime"].input_size == (64, 64)
    worst = dict.fromkeys(runtimes, 0.0)
    for array in arrays:
        x = runtimes["onnxruntime"].preprocess(array)
        with torch.no_grad():
            ref = model(torch.from_numpy(x))
        ref_map, ref_label = ref.anomaly_map[0, 0].numpy(), bool(ref.pred_label.reshape(-1)[0])
        # The adaptive threshold is one of the validation scores, so an image can sit exactly on it (normalised
        # score 0.5); there a 1e-6 difference may flip the label. Everywhere else labels must be identical.
        on_threshold = abs(float(ref.pred_score.reshape(-1)[0]) - 0.5) < 1e-4
        for name, runtime in runtimes.items():
            out = runtime.predict(array)
            worst[name] = max(worst[name], float(np.abs(out["anomaly_map"] - ref_map).max()))
            if name in {"onnxruntime", "openvino_f32"} and not on_threshold:
                assert out["label"] == ref_label, name
    assert worst["onnxruntime"] <= 1e-4, worst
    assert worst["openvino_f32"] <= 1e-4, worst
    assert worst["openvino_fp16_weights"] <= 2e-2, worst  # FP16 weights: stated tolerance on normalised maps
    # bf16 arithmetic (8 mantissa bits) on normalised maps in [0, 1]; f32 where the CPU compiled the hint as f32
    assert worst["openvino_bf16"] <= (0.1 if runtimes["openvino_bf16"].precision == "bf16" else 1e-4), worst


def test_predict_batch_equals_predict_per_image(exported, mvtec_root):
    _, onnx_path, xml_path, _ = exported
    _, arrays = images(mvtec_root)
    for runtime in (ExportedModel(onnx_path), ExportedModel(xml_path, precision="f32")):
        batch = runtime.predict_batch(np.concatenate([runtime.preprocess(a) for a in arrays]))
        assert batch["score"].shape == (len(arrays),) and batch["anomaly_map"].shape == (len(arrays), 64, 64)
        for i, array in enumerate(arrays):
            one = runtime.predict(array)
            assert one["label"] == bool(batch["label"][i])
            assert abs(one["score"] - float(batch["score"][i])) <= 1e-5
            assert np.abs(one["anomaly_map"] - batch["anomaly_map"][i]).max() <= 1e-5
        with pytest.raises(ValueError, match=r"expected a batch of shape \(N, 3, 64, 64\)"):
            runtime.predict_batch(np.zeros((2, 3, 32, 32), np.float32))


def test_infer_command_with_corrupt_image_and_no_overwrite(exported, mvtec_root, tmp_path):
    _, _, xml_path, _ = exported
    folder = tmp_path / "images"
    folder.mkdir()
    paths, _ = images(mvtec_root)
    for i, p in enumerate(paths[:4]):
        (folder / f"{i}_{p.name}").write_bytes(p.read_bytes())
    good = sorted(folder.iterdir())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out = tmp_path / "predictions"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "anomalib-mambaadv2"), "infer", "--model", str(xml_path), "--input",
         str(folder), "--output", str(out), "--no-progress"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "broken.png" in proc.stderr
    rows = list(csv.DictReader((out / CSV_NAME).open()))
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in good)
    for r in rows:
        assert 0.0 <= float(r["score"]) <= 1.0 and r["label"] in {"normal", "anomalous"}
    overlays = sorted((out / OVERLAY_DIR).iterdir())
    assert len(overlays) == len(good)
    assert Image.open(overlays[0]).size == Image.open(good[0]).size
    # a second run refuses to overwrite; --overwrite replaces
    before = (out / CSV_NAME).read_bytes()
    with pytest.raises(SystemExit) as err:
        main(["--model", str(xml_path), "--input", str(folder), "--output", str(out), "--no-progress"])
    assert err.value.code == 2
    assert (out / CSV_NAME).read_bytes() == before
    (folder / "broken.png").unlink()
    assert main(["--model", str(xml_path), "--input", str(folder), "--output", str(out), "--no-progress",
                 "--overwrite"]) == 0  # fmt: skip


def test_deploy_module_does_not_import_torch():
    code = "import sys, anomalib_mambaadv2.deploy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
