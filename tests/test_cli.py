# SPDX-License-Identifier: Apache-2.0
"""Command lines in subprocesses: the stock `anomalib` with the short name, the class path, our console script,
`python -m`, a config file, and export from a checkpoint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = [
    "--model.backbone", "resnet18", "--model.pre_trained", "false", "--model.image_size", "64",
    "--model.depths", "[1, 2, 2, 1]",
]  # fmt: skip
FOLDER = [
    "--data", "anomalib.data.Folder", "--data.name", "tiles", "--data.normal_dir", "train/good",
    "--data.abnormal_dir", "test/defect", "--data.mask_dir", "ground_truth/defect", "--data.normal_test_dir",
    "test/good", "--data.num_workers", "0", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
]  # fmt: skip

pytestmark = pytest.mark.slow


def run(cmd, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def data_root(mvtec_root):
    return mvtec_root / "tiles"


def test_stock_anomalib_short_name(data_root, tmp_path):
    out = run(
        [str(BIN / "anomalib"), "train", "--model", "MambaADv2", *SMALL, *FOLDER, "--data.root", str(data_root),
         "--trainer.max_epochs", "1", "--default_root_dir", str(tmp_path)],
        tmp_path,
    )  # fmt: skip
    assert "image_AUROC" in out and "pixel_AUPRO" in out
    assert checkpoints(tmp_path / "MambaADv2")


def test_console_script_with_class_path_then_export_with_python_m(data_root, tmp_path):
    run(
        [str(BIN / "anomalib-mambaadv2"), "fit", "--model", "anomalib_mambaadv2.MambaADv2", *SMALL, *FOLDER,
         "--data.root", str(data_root), "--trainer.max_epochs", "1", "--default_root_dir", str(tmp_path)],
        tmp_path,
    )  # fmt: skip
    ckpt = checkpoints(tmp_path)[-1]
    # pre_trained=true on the command line: the model rebuilt for export must not try to download (offline here)
    args = [a if a != "false" else "true" for a in SMALL]
    run(
        [sys.executable, "-m", "anomalib_mambaadv2", "export", "--model", "MambaADv2", *args, "--ckpt_path",
         str(ckpt), "--export_type", "openvino", "--export_root", str(tmp_path / "export")],
        tmp_path,
    )  # fmt: skip
    assert list((tmp_path / "export").rglob("model.xml"))


def test_train_from_config_files(data_root, tmp_path):
    data_cfg = tmp_path / "folder.yaml"
    text = (ROOT / "configs" / "data" / "folder.yaml").read_text()
    text = text.replace("./datasets/my_parts", str(data_root)).replace("normal_dir: good", "normal_dir: train/good")
    text = text.replace("abnormal_dir: defect", "abnormal_dir: test/defect\n  normal_test_dir: test/good")
    data_cfg.write_text(text.replace("num_workers: 8", "num_workers: 0").replace("batch_size: 16", "batch_size: 4"))
    out = run(
        [str(BIN / "anomalib"), "train", "--config", str(ROOT / "configs" / "mambaadv2.yaml"), "--data",
         str(data_cfg), *SMALL, "--trainer.max_epochs", "1", "--default_root_dir", str(tmp_path)],
        tmp_path,
    )  # fmt: skip
    assert "pixel_AUROC" in out
    assert checkpoints(tmp_path)


def test_autoload_costs_other_programs_nothing():
    """The .pth hook imports nothing for programs other than `anomalib`."""
    code = "import sys; print('anomalib_mambaadv2' in sys.modules, 'anomalib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert shutil.which("anomalib", path=str(BIN))
