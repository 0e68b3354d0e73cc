# SPDX-License-Identifier: Apache-2.0
"""One model configuration: MambaADv2Config holds every network option and its default; the modules take it whole."""

import dataclasses
import inspect

import pytest

from anomalib_mambaadv2 import MambaADv2, MambaADv2Model
from anomalib_mambaadv2.components.hss import HSSBlock, HSSCore
from anomalib_mambaadv2.components.hss_config import HSSConfig
from anomalib_mambaadv2.config import MambaADv2Config
from anomalib_mambaadv2.torch_model import as_pair

TINY = {"backbone": "resnet18", "pre_trained": False, "image_size": (64, 64), "depths": (1, 2, 1, 1)}


def test_the_lightning_options_are_the_config_fields_with_the_same_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(MambaADv2Config)}
    signature = inspect.signature(MambaADv2.__init__).parameters
    assert set(fields) <= set(signature), "every network option must be reachable as --model.<option>"
    for name, default in fields.items():
        given = signature[name].default
        if name == "image_size":
            given, default = as_pair(given), as_pair(default)
        assert given == default, (name, given, default)
    hss_fields = {f.name: f.default for f in dataclasses.fields(HSSConfig)}
    for name, default in hss_fields.items():  # the HSS defaults are HSSConfig's (checkpointing under another name)
        assert fields["activation_checkpointing" if name == "checkpointing" else name] == default, name


def test_the_model_keeps_its_config_and_every_block_gets_the_same_hss_options():
    options = {"d_state": 8, "headdim": 16, "chunk_size": 16, "rotation": False, "activation_checkpointing": True}
    config = MambaADv2Config(**TINY, **options)
    model = MambaADv2Model(config)
    assert model.config == config
    blocks = [m for m in model.modules() if isinstance(m, HSSBlock)]
    assert len(blocks) == sum(TINY["depths"])
    assert {b.core.config for b in blocks} == {config.hss()}
    assert config.hss() == HSSConfig(d_state=8, headdim=16, chunk_size=16, rotation=False, checkpointing=True)
    assert all(b.checkpointing and b.core.d_state == 8 and b.core.npairs == 0 for b in blocks)
    # keyword options replace fields of the config (or of the defaults)
    assert MambaADv2Model(config, sigma=2.0).config == dataclasses.replace(config, sigma=2.0)
    assert MambaADv2Model(**TINY).config == MambaADv2Config(**TINY)


def test_the_lightning_module_builds_its_network_from_one_config():
    module = MambaADv2(backbone="resnet18", pre_trained=False, image_size=64, depths=[1, 1, 1, 1], d_state=8)
    config = module.model.config
    assert (config.d_state, config.depths, config.image_size) == (8, (1, 1, 1, 1), (64, 64))
    assert config.pre_trained is False  # the encoder weights are loaded in setup("fit"), never at construction


def test_unknown_options_are_refused_with_the_list_of_options():
    with pytest.raises(TypeError, match=r"unknown MambaADv2 option\(s\) \['d_sate'\].*'d_state'"):
        MambaADv2Model(**TINY, d_sate=8)
    with pytest.raises(TypeError, match=r"unknown HSS option\(s\) \['dstate'\].*'d_state'"):
        HSSCore(16, dstate=8)
