# SPDX-License-Identifier: Apache-2.0
"""Every model option reaches the built model from Anomalib's command line (``--model.<name>``) and from YAML."""

import inspect

import pytest
import yaml
from anomalib.cli.cli import AnomalibCLI

from anomalib_mambaadv2 import MambaADv2
from anomalib_mambaadv2.components.freq_conv import GlobalFrequencyFilter
from anomalib_mambaadv2.components.hss import HSSBlock, HSSCore

# Anomalib's component arguments (pre/post-processor, evaluator, visualizer) are Anomalib's to parse.
COMPONENTS = {"pre_processor", "post_processor", "evaluator", "visualizer"}
BASE = {"backbone": "resnet18", "pre_trained": False, "image_size": 64, "depths": [1, 1, 1, 1]}


def cores(model: MambaADv2) -> list[HSSCore]:
    return [m for m in model.modules() if isinstance(m, HSSCore)]


def expand_factor(model: MambaADv2) -> int:
    block = next(m for m in model.modules() if isinstance(m, HSSBlock))
    return block.core.d_inner // block.norm.normalized_shape[0]


def max_drop_path(model: MambaADv2) -> float:
    return max((float(m.drop_prob) for m in model.modules() if hasattr(m, "drop_prob")), default=0.0)


# option: (a value other than the base model's, where that value shows in the built model)
OPTIONS = {
    "backbone": ("resnet34", lambda m: m.model.encoder.backbone),
    "layers": (["act1", "layer2", "layer3"], lambda m: list(m.model.encoder.layers)),
    "pre_trained": (True, lambda m: m.pre_trained),
    "backbone_weights": ("weights.pth", lambda m: m.backbone_weights),
    "image_size": (128, lambda m: m.model.image_size[0]),
    "depths": ([1, 2, 1, 1], lambda m: [sum(isinstance(b, HSSBlock) for b in s.modules()) for s in m.model.stages]),
    "directions": ([2, 2, 2, 2], lambda m: [2, 2, 2, 2] if {len(c.directions) for c in cores(m)} == {2} else None),
    "scan_curve": ("snake", lambda m: cores(m)[0].scan_curve),
    "d_state": (32, lambda m: cores(m)[0].d_state),
    "headdim": (16, lambda m: cores(m)[0].headdim),
    "expand": (1, expand_factor),
    "matrix_path": (False, lambda m: cores(m)[0].use_matrix),
    "trapezoid": (False, lambda m: cores(m)[0].use_trapezoid),
    "rotation": (False, lambda m: cores(m)[0].npairs > 0),
    "freq_branch": (False, lambda m: any(isinstance(x, GlobalFrequencyFilter) for x in m.modules())),
    "drop_path_rate": (0.0, max_drop_path),
    "chunk_size": (16, lambda m: cores(m)[0].chunk_size),
    "ssd_backend": ("auto", lambda m: cores(m)[0].ssd_backend),
    "sigma": (2.0, lambda m: m.model.anomaly_map.sigma),
    "activation_checkpointing": (True, lambda m: all(b.checkpointing for b in m.modules() if isinstance(b, HSSBlock))),
    "feature_dropout": (0.3, lambda m: m.model.bottleneck.dropout.p if hasattr(m.model.bottleneck.dropout, "p") else 0),
    "loss": ("cosine", lambda m: m.loss.kind),
    "lr": (0.001, lambda m: m.lr),
    "weight_decay": (0.0, lambda m: m.weight_decay),
}


def test_every_option_is_listed():
    assert set(inspect.signature(MambaADv2.__init__).parameters) - {"self"} - COMPONENTS == set(OPTIONS)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the CLI writes goes here


def build(tmp_path, extra: list[str]) -> MambaADv2:
    args = ["fit", "--model", "MambaADv2"]
    for key, value in BASE.items():
        args += [f"--model.{key}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()]
    args += ["--data", "MVTecAD", "--data.root", str(tmp_path), "--data.category", "x", *extra]
    return AnomalibCLI(args=args, run=False).model


@pytest.mark.parametrize("name", OPTIONS)
def test_option_from_the_command_line_changes_the_model(tmp_path, name):
    value, probe = OPTIONS[name]
    base = build(tmp_path, [])
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    changed = build(tmp_path, [f"--model.{name}", text])
    assert probe(changed) == value
    assert probe(base) != value


def test_options_from_yaml(tmp_path):
    options = {k: v for k, (v, _) in OPTIONS.items() if k not in {"backbone", "layers", "image_size"}}
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": "MambaADv2", "init_args": {**BASE, **options}}}))
    model = build(tmp_path, ["--config", str(config)])
    for name, value in options.items():
        assert OPTIONS[name][1](model) == value, name
