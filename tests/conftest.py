# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: a tiny MVTec-layout dataset made on the fly (no downloads)."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
THREADS = 2  # fixed, not the machine's core count: float reductions (and so tolerances) depend on it


@pytest.fixture(autouse=True)
def _deterministic_machine() -> None:
    """Every test starts from the same seeds and thread count, whatever ran before it and whatever the CPU."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    torch.set_num_threads(THREADS)


def make_mvtec_like(root: Path, categories=("tiles",), size=64, n_train=8, n_good=3, n_bad=3, seed=0) -> Path:
    """Write ``root/<category>/{train/good,test/good,test/defect,ground_truth/defect}`` with smooth textures.

    Defects are bright squares; masks cover exactly those pixels. One test image is grayscale and one RGBA, so the
    data path's RGB conversion is exercised.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for c, category in enumerate(categories):
        base = root / category
        dirs = {d: base / d for d in ("train/good", "test/good", "test/defect", "ground_truth/defect")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)

        def texture(c=c):
            freq = rng.uniform(0.15, 0.3)
            phase = rng.uniform(0, 2 * np.pi, 3)
            img = np.stack([np.sin(freq * (xx + 2 * yy) * (1 + 0.3 * k) + phase[k] + c) for k in range(3)], -1)
            img = 127 + 60 * img + rng.normal(0, 6, (size, size, 3))
            return np.clip(img, 0, 255).astype(np.uint8)

        for i in range(n_train):
            Image.fromarray(texture()).save(dirs["train/good"] / f"{i:03d}.png")
        for i in range(n_good):
            img = Image.fromarray(texture())
            img = img.convert("L") if i == 0 else img  # a grayscale test image
            img.save(dirs["test/good"] / f"{i:03d}.png")
        for i in range(n_bad):
            img = texture()
            mask = np.zeros((size, size), np.uint8)
            s = size // 4
            y0, x0 = rng.integers(0, size - s, 2)
            mask[y0 : y0 + s, x0 : x0 + s] = 255
            img[mask > 0] = [250, 20, 20]
            pil = Image.fromarray(img)
            pil = pil.convert("RGBA") if i == 0 else pil  # an RGBA test image
            pil.save(dirs["test/defect"] / f"{i:03d}.png")
            Image.fromarray(mask).save(dirs["ground_truth/defect"] / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    return make_mvtec_like(tmp_path_factory.mktemp("mvtec"))
