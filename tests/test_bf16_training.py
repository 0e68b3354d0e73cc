# SPDX-License-Identifier: Apache-2.0
"""Mixed precision on CPU: 200 steps at the default learning rate under bf16 autocast stay finite and learn."""

import math

import pytest
import torch

from anomalib_mambaadv2.loss import ReconstructionLoss
from anomalib_mambaadv2.torch_model import MambaADv2Model


@pytest.mark.slow
def test_bf16_autocast_training_stays_finite():
    model = MambaADv2Model(backbone="resnet18", pre_trained=False, image_size=64, depths=(1, 1, 1, 1)).train()
    decoder = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(decoder, lr=5e-3, weight_decay=1e-4)  # the module's lr at batch 16
    loss_fn = ReconstructionLoss("mse")
    images = torch.rand(2, 3, 64, 64)
    losses = []
    for step in range(200):
        batch = images.roll(step, dims=-1)  # a new view of the same textures each step
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(*model(batch))
        assert math.isfinite(loss.item()), f"loss is {loss.item()} at step {step}"
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, 5.0)  # as the module's trainer arguments
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:5]) / 5  # it learns, not only survives
