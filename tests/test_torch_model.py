# SPDX-License-Identifier: Apache-2.0
"""The MambaADv2 network: shapes, frozen encoder, learning, ablations, HSS fast path, anomaly map, export."""

import numpy as np
import pytest
import torch
from helpers import export_and_compare
from scipy import ndimage

from anomalib_mambaadv2.anomaly_map import AnomalyMapGenerator
from anomalib_mambaadv2.components.hss import MAX_LOG_DECAY, HSSCore
from anomalib_mambaadv2.components.scanning import scan_permutations
from anomalib_mambaadv2.components.ssd_reference import global_matrix_mix, position_aware_bc, ssd
from anomalib_mambaadv2.loss import ReconstructionLoss
from anomalib_mambaadv2.torch_model import MambaADv2Model, dss_grouping

TINY = {"depths": (1, 2, 2, 1), "pre_trained": False}

BACKBONES = [
    ("resnet18", ("layer1", "layer2", "layer3"), [64, 128, 256]),
    ("resnet34", ("layer1", "layer2", "layer3"), [64, 128, 256]),
    ("wide_resnet50_2", ("layer1", "layer2", "layer3"), [256, 512, 1024]),
    ("efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"), [24, 40, 112]),
]


@pytest.mark.parametrize(("backbone", "layers", "channels"), BACKBONES)
def test_shapes_for_each_backbone(backbone, layers, channels):
    torch.manual_seed(0)
    size = 64
    model = MambaADv2Model(backbone=backbone, layers=layers, image_size=(size, size), **TINY)
    x = torch.randn(2, 3, size, size)
    model.train()
    enc, dec = model(x)
    assert [e.shape[1] for e in enc] == channels
    assert [tuple(d.shape) for d in dec] == [tuple(e.shape) for e in enc]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert tuple(out.pred_score.shape) == (2, 1)
    assert tuple(out.anomaly_map.shape) == (2, 1, size, size)
    assert torch.isfinite(out.anomaly_map).all()
    torch.testing.assert_close(out.pred_score, out.anomaly_map.amax(dim=(-2, -1)))


@pytest.mark.parametrize("size", [(96, 96), (64, 128), (224, 224)])
def test_non_square_and_non_power_of_two_grids(size):
    model = MambaADv2Model(backbone="resnet18", image_size=size, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert tuple(out.anomaly_map.shape) == (1, 1, *size)


def test_invalid_image_size_names_valid_sizes():
    with pytest.raises(ValueError, match=r"multiples of 32.*e\.g\. 128, 224, 256"):
        MambaADv2Model(backbone="resnet18", image_size=(100, 100), **TINY)
    model = MambaADv2Model(backbone="resnet18", image_size=(64, 64), **TINY)
    with pytest.raises(ValueError, match=r"RGB images"):
        model(torch.randn(1, 1, 64, 64))


def test_encoder_frozen_decoder_learns():
    torch.manual_seed(0)
    model = MambaADv2Model(backbone="resnet18", image_size=(64, 64), drop_path_rate=0.0, **TINY)
    model.train()
    assert not model.encoder.training  # kept in eval mode: BatchNorm statistics never move
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    x = torch.randn(4, 3, 64, 64)
    loss_fn = ReconstructionLoss()
    losses = []
    for step in range(6):
        opt.zero_grad()
        loss = loss_fn(*model(x))
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                if name.startswith("encoder."):
                    assert p.grad is None, name
                else:
                    assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
        opt.step()
        losses.append(loss.item())
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), f"encoder tensor {k} changed"
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize(
    "switch",
    [
        {"matrix_path": False},
        {"trapezoid": False},
        {"rotation": False},
        {"freq_branch": False},
        {"directions": (8, 8, 8, 8)},
        {"scan_curve": "snake"},
        {"matrix_path": False, "trapezoid": False, "rotation": False, "freq_branch": False},
    ],
)
def test_ablation_switches_build_and_run(switch):
    model = MambaADv2Model(backbone="resnet18", image_size=(64, 64), **TINY, **switch)
    default = MambaADv2Model(backbone="resnet18", image_size=(64, 64), **TINY)
    n_switch = sum(p.numel() for p in model.parameters())
    n_default = sum(p.numel() for p in default.parameters())
    if "directions" not in switch and "scan_curve" not in switch:
        assert n_switch != n_default  # the switch really changes the network
    model.train()
    enc, dec = model(torch.randn(2, 3, 64, 64))
    loss = ReconstructionLoss()(enc, dec)
    loss.backward()
    assert torch.isfinite(loss)


def test_dss_grouping_follows_mambaad():
    assert dss_grouping(3) == [3]
    assert dss_grouping(4) == [2, 2]
    assert dss_grouping(6) == [3, 3]
    assert dss_grouping(2) == [2]
    assert dss_grouping(1) == [1]


def hss_reference(core: HSSCore, u: torch.Tensor) -> torch.Tensor:
    """HSSCore.forward with one SSD call per direction (the obvious loop the batched fast path replaces)."""
    import math

    import torch.nn.functional as F

    b, hh, ww, _ = u.shape
    length, nh, p = hh * ww, core.nheads, core.headdim
    z, x, Bp, Cp, dt, a, trap, ang = torch.split(core.in_proj(u), core.splits, dim=-1)
    x = F.silu(core.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(b, length, nh, p)
    dt = F.softplus(dt.reshape(b, length, nh) + core.dt_bias)
    A = -F.softplus(a.reshape(b, length, nh) + core.a_bias).clamp_min(1e-4)
    A = torch.maximum(A, -MAX_LOG_DECAY / dt)  # the module bounds the log-decay -ΔA of one step
    Bp = Bp.reshape(b, length, 1, -1)
    Bp = Bp / Bp.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() + core.B_bias
    Cp = Cp.reshape(b, length, 1, -1)
    Cp = Cp / Cp.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() + core.C_bias
    lam = torch.sigmoid(trap.reshape(b, length, nh)) if core.use_trapezoid else None
    omega = math.pi * torch.tanh(ang.reshape(b, length, -1)) if core.npairs else None
    perm, inv = scan_permutations(hh, ww, core.scan_curve)
    ys = []
    for k in core.directions:
        pk, ik = perm[k], inv[k]
        xk, dtk, Bk, Ck = x[:, pk], dt[:, pk], Bp[:, pk], Cp[:, pk]
        lamk = None if lam is None else lam[:, pk]
        omk = None if omega is None else omega[:, pk]
        yk = ssd(xk, dtk, A[:, pk], Bk, Ck, None, lamk, omk)
        if core.gain is not None:  # matrix path: same B̃, C̃ and discretised input s ⊙ x as this direction's scan
            s_k = dtk.clone()  # s_t = λ_t Δ_t + (1 − λ_{t+1}) Δ_{t+1}
            if lamk is not None:
                s_k = lamk * dtk
                s_k[:, :-1] += ((1 - lamk) * dtk)[:, 1:]
            Bm, Cm = position_aware_bc(Bk, Ck, dtk, omk)
            yk = yk + core.gain[:, None] * global_matrix_mix(xk * s_k.unsqueeze(-1), Bm, Cm)
        ys.append(yk[:, ik])
    y = torch.stack(ys).mean(0)
    y = y + core.D[:, None] * x
    y = core.out_norm(y.reshape(b, hh, ww, -1)) * F.silu(z)
    return core.out_proj(y)


@pytest.mark.parametrize(("grid", "directions"), [((8, 8), list(range(8))), ((6, 10), [2, 3]), ((4, 4), [5])])
def test_hss_batched_directions_match_loop(grid, directions):
    torch.manual_seed(1)
    core = HSSCore(32, directions=directions, d_state=16, headdim=16)
    with torch.no_grad():  # non-trivial angle rates, so rotation matters
        core.in_proj.weight[-core.npairs :].normal_()
    u = torch.randn(2, *grid, 32)
    torch.testing.assert_close(core(u), hss_reference(core, u), rtol=1e-4, atol=1e-5)


def test_anomaly_map_matches_scipy_and_cosine():
    gen = torch.Generator().manual_seed(0)
    enc = [torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)]
    dec = [torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)]
    amap = AnomalyMapGenerator(sigma=4)(enc, dec, (64, 64))
    raw = AnomalyMapGenerator(sigma=0)(enc, dec, (64, 64))
    # raw map: mean over scales of upsampled 1 - cos
    d0 = 1 - torch.nn.functional.cosine_similarity(enc[0], dec[0], dim=1)
    up0 = torch.nn.functional.interpolate(d0[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    d1 = 1 - torch.nn.functional.cosine_similarity(enc[1], dec[1], dim=1)
    up1 = torch.nn.functional.interpolate(d1[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(raw, (up0 + up1) / 2)
    # blur: scipy's Gaussian with torch's "reflect" padding (scipy calls it "mirror"), truncate at 4σ
    expected = np.stack([ndimage.gaussian_filter(r[0].double().numpy(), 4, mode="mirror") for r in raw])
    np.testing.assert_allclose(amap[:, 0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_loss_kinds():
    enc = [torch.randn(2, 4, 8, 8)]
    dec = [torch.randn(2, 4, 8, 8, requires_grad=True)]
    mse = ReconstructionLoss("mse")(enc, dec)
    torch.testing.assert_close(mse, 5 * torch.nn.functional.mse_loss(dec[0], enc[0]))
    cos = ReconstructionLoss("cosine")(enc, dec)
    torch.testing.assert_close(cos, (1 - torch.nn.functional.cosine_similarity(enc[0], dec[0], dim=1)).mean())
    with pytest.raises(ValueError, match="mse"):
        ReconstructionLoss("l1")


def test_eval_path_exports_to_onnx_and_openvino(tmp_path):
    torch.manual_seed(0)
    model = MambaADv2Model(backbone="resnet18", image_size=(64, 64), **TINY)
    # train a couple of steps so BatchNorm and filters are not at their identity initialisation
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(2, 3, 64, 64)
    for _ in range(2):
        opt.zero_grad()
        ReconstructionLoss()(*model(x)).backward()
        opt.step()
    model.eval()
    diffs = export_and_compare(model, (torch.randn(2, 3, 64, 64),), tmp_path, atol=1e-4)
    assert set(diffs) == {"onnxruntime", "openvino"}


def test_hss_batch_split_matches_whole_batch(monkeypatch):
    """Eager mode mixes large batches a few images at a time; the result equals the whole batch at once."""
    import anomalib_mambaadv2.components.hss as hss

    torch.manual_seed(2)
    core = HSSCore(16, directions=[0, 1, 4], d_state=8, headdim=8)
    with torch.no_grad():
        core.in_proj.weight[-core.npairs :].normal_()
    u = torch.randn(5, 8, 8, 16)
    monkeypatch.setattr(hss, "_WORKING_SET", 1 << 40)
    whole = core(u)
    monkeypatch.setattr(hss, "_WORKING_SET", 3 * 64 * 32 * 2)  # two images per call: groups of 2, 2, 1
    torch.testing.assert_close(core(u), whole, rtol=1e-5, atol=1e-6)


def test_hss_traces_before_any_eager_call(monkeypatch):
    """Scan indices first built while torch.export traces must not be FakeTensors (nor be cached as such)."""
    import anomalib_mambaadv2.components.hss as hss
    import anomalib_mambaadv2.components.scanning as scanning

    # a cold start whatever ran before: the HSS path's caches (its gather indices and the scan permutations) emptied
    hss._scan_indices.cache_clear()
    scanning._cached_permutations.cache_clear()
    torch.manual_seed(3)
    core = HSSCore(24, directions=[3, 6], d_state=8, headdim=12).eval()  # a grid/heads combination no other test uses
    # eager mode would mix two images per call: a size test that export must not see (it would fix the batch)
    monkeypatch.setattr(hss, "_WORKING_SET", 2 * len(core.directions) * 7 * 13 * core.d_inner)
    u = torch.randn(2, 7, 13, 24)
    # the batch stays dynamic (Anomalib exports with a dynamic batch axis): nothing may branch on its size
    exported = torch.export.export(core, (u,), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    # the indices were first made inside the trace, and what the caches hold is plain NumPy
    assert hss._scan_indices.cache_info().misses >= 1
    assert scanning._cached_permutations.cache_info().misses >= 1
    cached = hss._scan_indices(7, 13, core.scan_curve, tuple(core.directions), core.nheads)
    assert hss._scan_indices.cache_info().hits >= 1
    assert all(type(i) is np.ndarray for i in cached)
    torch.testing.assert_close(exported.module()(u), core(u), rtol=1e-5, atol=1e-6)
    u3 = torch.randn(3, 7, 13, 24)
    torch.testing.assert_close(exported.module()(u3), core(u3), rtol=1e-5, atol=1e-6)


def test_hss_with_known_grid_uses_buffers_and_matches_reference():
    """A block told its grid makes its scan indices once (non-persistent buffers); outputs do not change."""
    torch.manual_seed(4)
    core = HSSCore(32, directions=[1, 6], d_state=16, headdim=16, grid_size=(8, 12))
    with torch.no_grad():
        core.in_proj.weight[-core.npairs :].normal_()
    lazy = HSSCore(32, directions=[1, 6], d_state=16, headdim=16)
    lazy.load_state_dict(core.state_dict(), strict=True)  # same keys: the buffers are not in the state dict
    assert {"scan_tokens", "scan_into", "scan_back"} <= {name for name, _ in core.named_buffers()}
    assert not any(name.startswith("scan_") for name in core.state_dict())
    u = torch.randn(2, 8, 12, 32)
    tokens, into, back = core._scan_index(8, 12, u.device)
    assert tokens is core.scan_tokens and into is core.scan_into and back is core.scan_back
    torch.testing.assert_close(core(u), hss_reference(core, u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(core(u), lazy(u), rtol=0, atol=0)
    other = torch.randn(1, 6, 6, 32)  # another grid: indices made on use, still the reference result
    torch.testing.assert_close(core(other), hss_reference(core, other), rtol=1e-4, atol=1e-5)


def test_model_compiles_without_graph_breaks():
    """torch.compile sees the whole eval forward as one graph (scan indices are buffers, not NumPy calls)."""
    torch.manual_seed(5)
    model = MambaADv2Model(backbone="resnet18", image_size=(64, 64), **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(x)
            assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
            assert explained.graph_count == 1
            compiled = torch.compile(model, backend="eager", fullgraph=True)  # the traced graph, run by eager kernels
            out, ref = compiled(x), model(x)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out.anomaly_map, ref.anomaly_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pred_score, ref.pred_score, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.full((1, 3, 64, 64), float("nan")), "NaN or infinite pixel values"),
        (torch.full((1, 3, 64, 64), float("inf")), "NaN or infinite pixel values"),
        (torch.rand(1, 1, 64, 64), r"expects RGB images shaped \(B, 3, H, W\)"),
        (torch.rand(1, 3, 80, 64), "image_size .* multiples of 32"),
    ],
)
def test_bad_model_inputs_are_named(images, message):
    model = MambaADv2Model(backbone="resnet18", pre_trained=False, image_size=64, depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(images)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing the HSS blocks in backward (stochastic depth on, so the saved RNG state matters) changes nothing."""
    images = torch.rand(2, 3, 64, 64)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        net = MambaADv2Model(
            backbone="resnet18", pre_trained=False, image_size=64, depths=(1, 2, 1, 1), drop_path_rate=0.5,
            activation_checkpointing=checkpointing,
        ).train()  # fmt: skip
        torch.manual_seed(1)
        loss = ReconstructionLoss("mse")(*net(images))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and len(grads0) > 50
    assert max((grads0[n] - grads1[n]).abs().max().item() for n in grads0) <= 1e-6


def test_feature_dropout_corrupts_the_code_in_training_only():
    torch.manual_seed(0)
    model = MambaADv2Model(
        backbone="resnet18", pre_trained=False, image_size=(64, 64), depths=(1, 1, 1, 1), feature_dropout=0.5
    )
    sizes = zip(model.encoder.channels, model.encoder.reductions, strict=True)
    feats = [torch.randn(2, c, 64 // r, 64 // r) for c, r in sizes]
    model.bottleneck.train()
    a, b = model.bottleneck(feats), model.bottleneck(feats)
    assert not torch.allclose(a, b)  # a fresh mask each call
    model.bottleneck.eval()
    assert torch.equal(model.bottleneck(feats), model.bottleneck(feats))
    with pytest.raises(ValueError, match=r"feature_dropout must be in \[0, 1\)"):
        MambaADv2Model(backbone="resnet18", pre_trained=False, image_size=(64, 64), feature_dropout=1.0)
