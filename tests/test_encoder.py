# SPDX-License-Identifier: Apache-2.0
"""The frozen timm encoder: layer selection, freezing, local weights and the offline failure mode."""

import time

import huggingface_hub.constants
import pytest
import timm
import torch
from helpers import export_and_compare
from torch import nn

from anomalib_mambaadv2.components.encoder import FrozenEncoder, load_timm_state_dict

RESNET_LAYERS = ("layer1", "layer2", "layer3")


@pytest.mark.parametrize(
    ("backbone", "layers", "channels"),
    [
        ("resnet18", RESNET_LAYERS, [64, 128, 256]),
        ("resnet34", RESNET_LAYERS, [64, 128, 256]),
        ("wide_resnet50_2", RESNET_LAYERS, [256, 512, 1024]),
        ("efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"), [24, 40, 112]),
    ],
)
def test_channels_reductions_and_shapes(backbone, layers, channels):
    encoder = FrozenEncoder(backbone, layers=layers, pre_trained=False)
    assert encoder.channels == channels
    assert encoder.reductions == [4, 8, 16]
    features = encoder(torch.rand(2, 3, 64, 64))
    assert isinstance(features, list)
    expected = [(2, c, 64 // r, 64 // r) for c, r in zip(channels, [4, 8, 16], strict=True)]
    assert [tuple(f.shape) for f in features] == expected


def test_default_is_resnet34_layer1_to_3():
    encoder = FrozenEncoder(pre_trained=False)
    assert encoder.backbone == "resnet34"
    assert encoder.layers == RESNET_LAYERS
    # resnet34 has 3/4/6 basic blocks in layer1..3, resnet18 has 2/2/2: check we really built resnet34.
    assert len(encoder.feature_extractor.layer3) == 6


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match="layer9") as info:
        FrozenEncoder("resnet18", layers=("layer1", "layer9"), pre_trained=False)
    for name in ("act1", "layer1", "layer2", "layer3", "layer4"):
        assert name in str(info.value)


def test_unknown_efficientnet_layer_lists_timm_module_names():
    with pytest.raises(ValueError, match=r"blocks\.6") as info:
        FrozenEncoder("efficientnet_lite0", layers=("layer1",), pre_trained=False)
    assert "blocks.4" in str(info.value)


def test_unknown_backbone():
    with pytest.raises(ValueError, match=r"not_a_backbone.*timm\.list_models"):
        FrozenEncoder("not_a_backbone", pre_trained=False)


def test_layers_out_of_order_rejected():
    # timm returns maps in network order; accepting this would mislabel channels.
    with pytest.raises(ValueError, match="shallow to deep"):
        FrozenEncoder("resnet18", layers=("layer3", "layer1"), pre_trained=False)


def test_stays_in_eval_mode_and_bn_stats_frozen():
    encoder = FrozenEncoder("resnet18", pre_trained=False)
    parent = nn.Sequential(encoder, nn.Identity())
    parent.train()
    assert parent.training
    assert not encoder.training
    assert not any(module.training for module in encoder.modules())
    encoder.train(True)
    assert not any(module.training for module in encoder.modules())

    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder(torch.randn(4, 3, 64, 64) * 5 + 3)
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_no_parameter_requires_grad():
    encoder = FrozenEncoder("resnet18", pre_trained=False)
    params = list(encoder.parameters())
    assert params
    assert not any(p.requires_grad for p in params)


def test_output_does_not_require_grad():
    encoder = FrozenEncoder("resnet18", pre_trained=False)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    features = encoder(x)
    assert not any(f.requires_grad for f in features)
    assert all(f.grad_fn is None for f in features)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("backbone", "layers"), [("resnet18", RESNET_LAYERS), ("efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"))]
)
def test_channels_last_encoder_matches_timm_reference(backbone, layers, dtype):
    """The encoder runs channels-last (a CPU speed-up): same features as timm's model in the default layout."""
    torch.manual_seed(0)
    encoder = FrozenEncoder(backbone, layers=layers, pre_trained=False).to(dtype)
    reference = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True,
                                  out_indices=encoder.feature_extractor.feature_info.out_indices)  # fmt: skip
    reference.load_state_dict(encoder.feature_extractor.state_dict())
    reference = reference.to(dtype).eval()
    conv = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # the layout is really channels-last, not a 1x1 special case
    images = torch.randn(2, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        expected = reference(images)
    features = encoder(images)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for got, want in zip(features, expected, strict=True):
        assert got.is_contiguous()  # the decoder gets the default layout
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


def test_onnx_export_matches_eager(tmp_path):
    encoder = FrozenEncoder("resnet18", pre_trained=False)
    diffs = export_and_compare(encoder, (torch.rand(1, 3, 64, 64),), tmp_path)
    assert max(diffs.values()) < 1e-4


def _manual_resnet_features(model, x):
    """layer1..layer3 outputs of a timm ResNet, computed by hand."""
    x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
    out = []
    for layer in (model.layer1, model.layer2, model.layer3):
        x = layer(x)
        out.append(x)
    return out


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_weights_round_trip(tmp_path, suffix):
    torch.manual_seed(123)
    source = timm.create_model("resnet18", pretrained=False).eval()
    # Non-trivial BatchNorm statistics, so that loading the buffers is checked too.
    for module in source.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state_dict = source.state_dict()
    assert "fc.weight" in state_dict and "layer4.0.conv1.weight" in state_dict  # full classifier keys
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state_dict, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))

    torch.manual_seed(0)  # a different random init, overwritten by the file
    encoder = FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)
    loaded = encoder.feature_extractor.state_dict()
    assert torch.equal(loaded["layer1.0.conv1.weight"], state_dict["layer1.0.conv1.weight"])
    assert torch.equal(loaded["layer3.1.bn2.running_var"], state_dict["layer3.1.bn2.running_var"])

    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = _manual_resnet_features(source, x)
    features = encoder(x)
    assert len(features) == 3
    for got, want in zip(features, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # Same as timm's own features_only model with the state loaded.
    reference = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3), pretrained=False).eval()
    reference.load_state_dict({k: v for k, v in state_dict.items() if k in reference.state_dict()})
    with torch.no_grad():
        for got, want in zip(features, reference(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_backbone_weights_efficientnet_drops_head(tmp_path):
    torch.manual_seed(7)
    state_dict = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert {"conv_head.weight", "classifier.weight", "bn2.weight"} <= set(state_dict)
    path = tmp_path / "effnet.pth"
    torch.save(state_dict, path)
    encoder = FrozenEncoder(
        "efficientnet_lite0", layers=("blocks.1", "blocks.2", "blocks.4"), pre_trained=False, backbone_weights=path
    )
    loaded = encoder.feature_extractor.state_dict()
    assert "conv_head.weight" not in loaded
    assert torch.equal(loaded["blocks.2.0.conv_pw.weight"], state_dict["blocks.2.0.conv_pw.weight"])


def test_backbone_weights_without_unused_stages_and_head(tmp_path):
    state_dict = timm.create_model("resnet18", pretrained=False).state_dict()
    trimmed = {k: v for k, v in state_dict.items() if not k.startswith(("fc.", "layer4."))}
    path = tmp_path / "trimmed.pth"
    torch.save(trimmed, path)
    encoder = FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)
    assert torch.equal(encoder.feature_extractor.state_dict()["conv1.weight"], state_dict["conv1.weight"])


def test_wrapped_checkpoint_with_module_prefix(tmp_path):
    state_dict = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    loaded = load_timm_state_dict(path)
    assert set(loaded) == set(state_dict)
    encoder = FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)
    assert torch.equal(
        encoder.feature_extractor.state_dict()["layer2.1.conv2.weight"], state_dict["layer2.1.conv2.weight"]
    )


def test_missing_key_raises(tmp_path):
    state_dict = timm.create_model("resnet18", pretrained=False).state_dict()
    del state_dict["layer2.0.bn1.running_mean"]
    path = tmp_path / "missing.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"layer2\.0\.bn1\.running_mean"):
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)


def test_stray_key_raises(tmp_path):
    state_dict = timm.create_model("resnet18", pretrained=False).state_dict()
    state_dict["layer1.0.conv1.extra"] = torch.zeros(1)
    path = tmp_path / "stray.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.extra"):
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)


def test_wrong_architecture_weights_raise(tmp_path):
    # resnet18 weights lack resnet34's extra blocks.
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"layer1\.2\."):
        FrozenEncoder("resnet34", pre_trained=False, backbone_weights=path)


def test_wrong_shape_raises(tmp_path):
    state_dict = timm.create_model("resnet18", pretrained=False).state_dict()
    state_dict["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "shape.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight"):
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)


def test_missing_file_raises(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)


def test_module_state_dict_restores_frozen_weights():
    torch.manual_seed(1)
    trained = nn.ModuleDict({"encoder": FrozenEncoder("resnet18", pre_trained=False), "head": nn.Linear(2, 2)})
    torch.manual_seed(2)
    fresh = nn.ModuleDict({"encoder": FrozenEncoder("resnet18", pre_trained=False), "head": nn.Linear(2, 2)})
    checkpoint = trained.state_dict()
    assert "encoder.feature_extractor.conv1.weight" in checkpoint
    assert not torch.equal(
        checkpoint["encoder.feature_extractor.conv1.weight"],
        fresh.state_dict()["encoder.feature_extractor.conv1.weight"],
    )
    fresh.load_state_dict(checkpoint)
    x = torch.rand(1, 3, 64, 64)
    for got, want in zip(fresh["encoder"](x), trained["encoder"](x), strict=True):
        assert torch.equal(got, want)
    assert not any(p.requires_grad for p in fresh["encoder"].parameters())


@pytest.fixture
def empty_weight_caches(tmp_path, monkeypatch):
    """Point the Hugging Face and torch.hub caches at empty folders, so no cached weights are found."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TIMM_USE_OLD_CACHE", raising=False)


def test_offline_pretrained_fails_fast(empty_weight_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?i)could not download") as info:
        FrozenEncoder("resnet18", pre_trained=True)
    elapsed = time.monotonic() - start
    assert elapsed < 10.0
    assert "backbone_weights" in str(info.value)
    assert "pre_trained=False" in str(info.value)
    assert "HF_HUB_OFFLINE" in str(info.value)  # decided from the flag, before any network check


def test_unreachable_hub_fails_fast(empty_weight_caches, monkeypatch):
    # Not flagged offline, but the endpoint refuses connections: the pre-flight check must stop the slow retries.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="backbone_weights") as info:
        FrozenEncoder("resnet18", pre_trained=True)
    assert time.monotonic() - start < 10.0
    assert "pre_trained=False" in str(info.value)


def test_backbone_weights_win_over_pre_trained(tmp_path, empty_weight_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would raise
    state_dict = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state_dict, path)
    encoder = FrozenEncoder("resnet18", pre_trained=True, backbone_weights=path)
    assert torch.equal(encoder.feature_extractor.state_dict()["conv1.weight"], state_dict["conv1.weight"])
