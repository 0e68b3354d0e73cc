# SPDX-License-Identifier: Apache-2.0
"""SoftPostProcessor: strictly monotonic score normalisation (MambaADv2's default post-processor)."""

import torch

from anomalib_mambaadv2.post_processor import SoftPostProcessor


def test_soft_normalisation_keeps_the_ranking():
    scores = torch.linspace(-3.0, 5.0, 801)
    low, high, threshold = torch.tensor(0.2), torch.tensor(0.8), torch.tensor(0.5)
    soft = SoftPostProcessor._normalize(scores, low, high, threshold)
    assert torch.all(soft > 0) and torch.all(soft < 1)
    assert torch.all(soft[1:] > soft[:-1]), "strictly increasing: no ties, so AUROC equals that of the raw scores"
    assert SoftPostProcessor._normalize(threshold, low, high, threshold) == 0.5
    # near the threshold it is anomalib's linear normalisation
    near = torch.tensor([0.49, 0.51])
    linear = (near - threshold) / (high - low) + 0.5
    assert torch.allclose(SoftPostProcessor._normalize(near, low, high, threshold), linear, atol=1e-3)
    # without statistics (nothing validated yet) the scores pass unchanged
    nan = torch.tensor(float("nan"))
    assert torch.equal(SoftPostProcessor._normalize(scores, nan, nan, nan), scores)
