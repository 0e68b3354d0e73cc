# SPDX-License-Identifier: Apache-2.0
"""benchmarks/scaling.py: the MHSA replacement decoder, the slope fit, and a tiny end-to-end run."""

import csv
import math
import re

import pytest
import torch
from helpers import load_benchmark


@pytest.fixture(scope="module")
def scaling():
    return load_benchmark("scaling")


def test_mhsa_block_is_a_residual_attention_over_all_tokens(scaling):
    torch.manual_seed(0)
    block = scaling.MHSABlock(64).eval()
    assert block.heads == 2
    assert scaling.MHSABlock(112).heads == 2 and scaling.MHSABlock(24).heads == 1  # heads divide the width
    u = torch.randn(2, 5, 7, 64)
    with torch.no_grad():
        out = block(u)
        # reference: plain softmax attention with the same weights
        x = block.norm(u).reshape(2, 35, 64)
        q, k, v = block.qkv(x).chunk(3, dim=-1)

        def heads(t):
            return t.reshape(2, 35, 2, 32).transpose(1, 2)

        attn = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(32), dim=-1)
        expected = u + block.proj((attn @ heads(v)).transpose(1, 2).reshape(2, 35, 64)).reshape(2, 5, 7, 64)
        assert torch.allclose(out, expected, atol=1e-5)
        # every token sees every other: changing one token changes the output everywhere
        u2 = u.clone()
        u2[:, 0, 0] += 1.0
        assert torch.all((block(u2) - out)[:, 1:, 1:].abs().amax(-1) > 0)


def test_replacing_every_hss_block_keeps_the_decoder_shapes(scaling):
    from anomalib_mambaadv2.components.hss import HSSBlock

    model, attention, replaced = scaling.build_pair(64, "resnet18", (1, 2, 1, 1))
    assert replaced == sum(isinstance(m, HSSBlock) for m in model.modules()) == 5
    assert not any(isinstance(m, HSSBlock) for m in attention.modules())
    assert sum(isinstance(m, scaling.MHSABlock) for m in attention.modules()) == 5
    with torch.no_grad():
        feats = model.encoder(torch.rand(1, 3, 64, 64))
        assert [o.shape for o in attention.decode(feats)] == [o.shape for o in model.decode(feats)]
    assert scaling.grid_tokens(model, 64) == (16 * 16, 2 * 2 + 4 * 4 + 8 * 8 + 16 * 16)  # stage grids 2, 4, 8, 16


def test_slope_fit(scaling):
    tokens = [100, 400, 1600, 6400]
    assert scaling.fit_slope(tokens, [2 * t for t in tokens]) == pytest.approx(1.0)
    assert scaling.fit_slope(tokens, [3e-4 * t**2 for t in tokens]) == pytest.approx(2.0)
    assert math.isnan(scaling.fit_slope([100], [1.0]))


def test_scaling_tiny(scaling, tmp_path, capsys):
    out = tmp_path / "scaling"
    result = scaling.main(["--tiny", "--out", str(out)])
    with (out / "scaling.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["decoder"], int(r["size"])) for r in rows] == [
        (d, s) for s in scaling.TINY_SIZES for d in scaling.DECODERS
    ]
    for row in rows:
        assert float(row["median_ms"]) > 0 and float(row["q1_ms"]) <= float(row["q3_ms"])
        assert int(row["tokens_finest"]) == (int(row["size"]) // 4) ** 2
        assert math.isfinite(float(row["slope_all"])) and math.isfinite(float(row["slope_tail"]))
    assert set(result["slopes"]) == set(scaling.DECODERS)
    assert all(math.isfinite(v) for pair in result["slopes"].values() for v in pair)
    printed = capsys.readouterr().out
    assert "slope" in printed and "| 128 |" in printed
    text = (out / "scaling.md").read_text(encoding="utf-8")
    assert "python benchmarks/scaling.py --tiny" in text and "HSS blocks replaced" in text
    assert re.search(r"Code: commit [0-9a-f]{12}", text)
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit) as info:  # no silent overwrite
        scaling.main(["--tiny", "--out", str(out)])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        scaling.main(["--sizes", "100", "--out", str(tmp_path / "other")])
