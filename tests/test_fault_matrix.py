# SPDX-License-Identifier: Apache-2.0
"""Fault matrix of batch inference: awkward files, bad pixels and unwritable outputs (README, "Reliability").

The runtimes run a tiny hand-made ONNX graph with the exported models' interface (score = max of the map, map =
mean of the RGB input), so each case shows exactly what pixels reached the model; the real exported MambaADv2 runs
the same code in tests/test_deploy.py.
"""

import errno
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
from onnx import TensorProto, helper
from PIL import Image

from anomalib_mambaadv2 import deploy
from anomalib_mambaadv2.deploy import CSV_NAME, OVERLAY_DIR, ExportedModel, main
from anomalib_mambaadv2.image_io import load_rgb, to_rgb

SIZE = 32


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """model.onnx and its OpenVINO IR: map = mean over RGB, score = max of the map, label = score >= 0.5."""
    work = tmp_path_factory.mktemp("tiny_model")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["anomaly_map"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score4"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["score4", "shape"], ["pred_score"]),
        helper.make_node("GreaterOrEqual", ["pred_score", "half"], ["pred_label"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("pred_label", TensorProto.BOOL, [1, 1]),
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, SIZE, SIZE]),
        ],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 1]), helper.make_tensor("half", 1, [], [0.5])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx_path = work / "model.onnx"
    onnx.save(proto, onnx_path)
    xml_path = work / "model.xml"
    ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)
    return {"onnx": onnx_path, "openvino": xml_path}


def gradient(dtype=np.uint8, top=255) -> np.ndarray:
    ramp = np.linspace(0, 0.6, 48)[None, :] * np.linspace(0.2, 1, 40)[:, None]  # brightest pixel 0.6, not white
    return np.rint(ramp * top).astype(dtype)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# case → (how to write it, expected max score or None for "refused with this message")
def _cmyk_jpeg(p):
    return save(Image.fromarray(gradient()).convert("CMYK"), p, format="JPEG", quality=98)


READABLE = {
    "gray8.png": lambda p: save(Image.fromarray(gradient()), p),
    "gray16.png": lambda p: save(Image.fromarray(gradient(np.uint16, 65535)), p),
    "gray16.tif": lambda p: save(Image.fromarray(gradient(np.uint16, 65535)), p),
    "rgba.png": lambda p: save(Image.fromarray(np.dstack([gradient()] * 3 + [np.full((40, 48), 7, np.uint8)])), p),
    "palette.png": lambda p: save(Image.fromarray(gradient()).convert("P"), p),
    "cmyk.jpg": _cmyk_jpeg,
    "rgb.tif": lambda p: save(Image.fromarray(np.dstack([gradient()] * 3)), p),
    "one_pixel.png": lambda p: save(Image.new("RGB", (1, 1), (255, 255, 255)), p),
    "ünïcödé 名前.png": lambda p: save(Image.fromarray(gradient()), p),
}
BROKEN = {
    "zero_bytes.png": (lambda p: p.write_bytes(b""), "cannot identify image file"),
    "truncated.png": (
        lambda p: p.write_bytes(_png_bytes()[: len(_png_bytes()) // 2]),
        "truncated|broken|image file is truncated|unrecognized data stream|Truncated",
    ),
    "text.png": (lambda p: p.write_text("not an image", encoding="utf-8"), "cannot identify image file"),
    "float.tif": (lambda p: save(Image.fromarray(gradient().astype(np.float32) / 255), p), "floating-point image"),
}


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def digests(folder: Path) -> dict[str, str]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def awkward(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, write in READABLE.items():
        write(folder / name)
    for name, (write, _) in BROKEN.items():
        write(folder / name)
    (folder / "folder.png").mkdir()  # a directory with an image suffix: not an image, not listed
    return folder


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_infer_on_awkward_files(model_files, awkward, tmp_path, capsys, runtime):
    before = digests(awkward)
    out = tmp_path / "out"
    code = main(["--model", str(model_files[runtime]), "--input", str(awkward), "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1  # some images failed
    rows = {line.split(",")[0]: line.split(",") for line in (out / CSV_NAME).read_text("utf-8").splitlines()[1:]}
    assert set(rows) == set(READABLE), rows.keys()
    for name, (_, message) in BROKEN.items():
        line = next(line for line in err.splitlines() if name in line)
        assert "cannot read image" in line and any(m in line for m in message.split("|")), line
    assert "folder.png" not in err
    # 16-bit images are scaled, not clipped: they score like their 8-bit twin (the score is the brightest pixel)
    gray8 = float(rows["gray8.png"][1])
    assert gray8 == pytest.approx(0.6, abs=0.01)
    for name in ("gray16.png", "gray16.tif", "rgba.png", "palette.png", "rgb.tif", "ünïcödé 名前.png"):
        assert float(rows[name][1]) == pytest.approx(gray8, abs=2 / 255), name
    assert float(rows["cmyk.jpg"][1]) == pytest.approx(gray8, abs=0.03)
    assert (out / OVERLAY_DIR / "ünïcödé 名前.png").is_file()
    assert digests(awkward) == before  # inputs untouched


def test_sixteen_bit_scaling_and_bit_depth(model_files, tmp_path):
    model = ExportedModel(model_files["onnx"])
    half = np.full((40, 48), 32768, np.uint16)
    assert model.predict(half)["score"] == pytest.approx(0.5, abs=1 / 255)  # PIL's convert("RGB") would give 1.0
    twelve = ExportedModel(model_files["onnx"], bit_depth=12)
    assert twelve.predict(np.full((40, 48), 4095, np.uint16))["score"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"outside the 12-bit range 0\.\.4095; pass the sensor's bit depth"):
        twelve.predict(half)
    path = save(Image.fromarray(np.full((40, 48), 4095, np.uint16)), tmp_path / "twelve.png")
    out = tmp_path / "out"
    assert main(["--model", str(model_files["onnx"]), "--input", str(path), "--output", str(out), "--bit-depth", "12",
                 "--no-progress"]) == 0  # fmt: skip
    assert float((out / CSV_NAME).read_text().splitlines()[1].split(",")[1]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((8, 8, 3), np.inf, np.float32), "NaN or infinite"),
        (np.full((8, 8, 3), 2.0, np.float32), r"float pixels must lie in \[0, 1\]"),
        (np.zeros((8, 8, 2), np.uint8), r"expected an \(H, W\), \(H, W, 3\) or \(H, W, 4\) image array"),
        (np.zeros((2, 8, 8, 3), np.uint8), "expected an"),
    ],
)
def test_predict_refuses_bad_pixels(model_files, array, message):
    with pytest.raises(ValueError, match=message):
        ExportedModel(model_files["onnx"]).predict(array)


def test_predict_takes_float_arrays_and_mixed_sizes(model_files):
    model = ExportedModel(model_files["openvino"])
    scores = [model.predict(np.full((h, w, 3), 0.25, np.float32))["score"] for h, w in ((1, 1), (7, 300), (64, 64))]
    assert scores == pytest.approx([64 / 255] * 3, abs=1e-6)  # 0.25 → 64 in 8 bits, whatever the size


def test_input_is_a_directory_named_like_an_image(model_files, tmp_path, capsys):
    (tmp_path / "x.png").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(model_files["onnx"]), "--input", str(tmp_path / "x.png"), "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "no images" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unreadable_file_is_reported(model_files, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    save(Image.fromarray(gradient()), folder / "ok.png")
    locked = save(Image.fromarray(gradient()), folder / "locked.png")
    if os.geteuid() == 0:  # root reads any file: simulate the permission error where the file is opened
        real_open = deploy.load_rgb

        def refuse(path, **kwargs):
            if Path(path) == locked:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, **kwargs)

        monkeypatch.setattr(deploy, "load_rgb", refuse)
    else:
        locked.chmod(0)
    code = main(["--model", str(model_files["onnx"]), "--input", str(folder), "--output", str(tmp_path / "o"),
                 "--no-progress"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "locked.png: cannot read image" in err and "Permission denied" in err
    assert (tmp_path / "o" / CSV_NAME).read_text().count("\n") == 2  # header + ok.png


@pytest.mark.parametrize("failure", ["read_only", "disk_full"])
def test_unwritable_output_leaves_no_results(model_files, tmp_path, capsys, monkeypatch, failure):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        save(Image.fromarray(gradient()), folder / f"{i}.png")
    before = digests(folder)
    out = tmp_path / "out"
    calls = {"n": 0}
    real_save = Image.Image.save

    def broken_save(self, fp, *args, **kwargs):
        if str(fp).startswith(str(out)):
            calls["n"] += 1
            if failure == "read_only":
                raise PermissionError(errno.EROFS, "Read-only file system", str(fp))
            if calls["n"] == 2:  # the second overlay finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", broken_save)
    code = main(["--model", str(model_files["onnx"]), "--input", str(folder), "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot write the predictions" in err and "no predictions.csv was written" in err
    assert ("Read-only file system" if failure == "read_only" else "No space left on device") in err
    assert not (out / CSV_NAME).exists() and not (out / (CSV_NAME + ".partial")).exists()
    assert digests(folder) == before


def test_earlier_results_survive_a_failed_overwrite(model_files, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    save(Image.fromarray(gradient()), folder / "a.png")
    out = tmp_path / "out"
    args = ["--model", str(model_files["onnx"]), "--input", str(folder), "--output", str(out), "--no-progress"]
    assert main(args) == 0
    first = (out / CSV_NAME).read_bytes()

    def full_disk(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    assert main([*args, "--overwrite"]) == 2
    assert (out / CSV_NAME).read_bytes() == first


def test_to_rgb_modes():
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 65535, np.uint16)))).min() == 255
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 257, np.uint16)))).max() == 1
    assert np.asarray(to_rgb(np.full((2, 2), 1000, np.int32), bit_depth=10)).max() == 249
    with pytest.raises(ValueError, match="floating-point image"):
        to_rgb(Image.fromarray(np.zeros((2, 2), np.float32)))


@pytest.mark.slow
def test_very_large_image_is_predicted(model_files, tmp_path):
    path = save(Image.new("L", (10000, 10000), 128), tmp_path / "huge.png")  # 1e8 pixels: PIL warns, still reads
    with pytest.warns(Image.DecompressionBombWarning):
        image = load_rgb(path)
    assert image.size == (10000, 10000)
    assert ExportedModel(model_files["onnx"]).predict(image)["score"] == pytest.approx(128 / 255, abs=1e-6)
