# SPDX-License-Identifier: Apache-2.0
"""The chunked SSD core against its step-by-step reference, on random inputs."""

import math

import pytest
import torch

from anomalib_mambaadv2.components.ssd_reference import (
    global_matrix_mix,
    segsum,
    ssd,
    ssd_quadratic,
    ssd_reference,
)


def make_inputs(b=2, l=37, h=4, p=8, g=2, n=16, s=4, dtype=torch.float32, seed=0, trap=True, rot=True):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x = r(b, l, h, p)
    dt = torch.nn.functional.softplus(r(b, l, h) - 1.0)
    A = -torch.exp(0.5 * r(b, l, h)).clamp_min(1e-4)
    B = r(b, l, g, n)
    C = r(b, l, g, n)
    D = r(h)
    lam = torch.sigmoid(r(b, l, h)) if trap else None
    omega = math.pi * torch.tanh(r(b, l, h, s)) if rot else None
    return {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "lam": lam, "omega": omega}


@pytest.mark.parametrize("trap", [False, True])
@pytest.mark.parametrize("rot", [False, True])
@pytest.mark.parametrize(("l", "chunk"), [(37, 8), (64, 16), (5, 64), (50, 7), (300, 4), (1000, 8)])
def test_chunked_matches_reference(trap, rot, l, chunk):
    inp = make_inputs(l=l, trap=trap, rot=rot, seed=l + chunk)
    ref = ssd_reference(**{k: v.double() if v is not None else None for k, v in inp.items()})
    out = ssd(**inp, chunk_size=chunk)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("h", "g"), [(1, 1), (4, 1), (4, 4), (6, 3)])
def test_head_and_group_counts(h, g):
    inp = make_inputs(h=h, g=g, l=29, seed=h * 10 + g)
    ref = ssd_reference(**{k: v.double() if v is not None else None for k, v in inp.items()})
    torch.testing.assert_close(ssd(**inp, chunk_size=8).double(), ref, rtol=1e-4, atol=1e-5)


def test_reversed_sequence():
    inp = make_inputs(l=41, seed=3)
    flipped = {k: (v.flip(1) if v is not None and v.ndim > 1 else v) for k, v in inp.items()}
    ref = ssd_reference(**{k: v.double() if v is not None else None for k, v in flipped.items()})
    out = ssd(**flipped, chunk_size=16)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    # reversing changes the answer: the scan is causal
    assert (out.flip(1) - ssd(**inp, chunk_size=16)).abs().max() > 1e-2


def test_shared_omega_over_heads():
    inp = make_inputs(l=23, seed=5)
    inp["omega"] = inp["omega"][:, :, 0]  # (b, l, s)
    ref = ssd_reference(**{k: v.double() if v is not None else None for k, v in inp.items()})
    torch.testing.assert_close(ssd(**inp, chunk_size=8).double(), ref, rtol=1e-4, atol=1e-5)


def textbook_mamba2(x, dt, A, B, C, D):
    """y_t = Σ_{s<=t} (C_t·B_s) exp(Σ_{r=s+1..t} Δ_r A_r) Δ_s x_s + D x_t, written with explicit loops over (t, s)."""
    _, l, h, _ = x.shape
    B = B.repeat_interleave(h // B.shape[2], dim=2)
    C = C.repeat_interleave(h // C.shape[2], dim=2)
    y = torch.zeros_like(x)
    for t in range(l):
        for s in range(t + 1):
            decay = torch.exp((dt[:, s + 1 : t + 1] * A[:, s + 1 : t + 1]).sum(1))  # (b, h)
            cb = (C[:, t] * B[:, s]).sum(-1)  # (b, h)
            y[:, t] += (cb * decay * dt[:, s])[..., None] * x[:, s]
        y[:, t] += D[:, None] * x[:, t]
    return y


def test_euler_no_rotation_is_textbook_mamba2():
    inp = make_inputs(l=19, trap=False, rot=False, seed=11, dtype=torch.float64)
    expected = textbook_mamba2(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"])
    torch.testing.assert_close(ssd(**inp, chunk_size=4), expected, rtol=1e-10, atol=1e-10)
    # λ ≡ 1 and ω ≡ 0 given explicitly are the same thing
    inp["lam"] = torch.ones_like(inp["dt"])
    inp["omega"] = torch.zeros(2, 19, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ssd(**inp, chunk_size=4), expected, rtol=1e-10, atol=1e-10)


def test_quadratic_form_matches_reference():
    inp = make_inputs(l=33, seed=8, dtype=torch.float64)
    torch.testing.assert_close(ssd_quadratic(**inp), ssd_reference(**inp), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("l", [1, 17, 256])
def test_matrix_path_equals_explicit(l, dtype):
    gen = torch.Generator().manual_seed(l)
    x = torch.randn(2, l, 4, 8, generator=gen, dtype=dtype)
    B = torch.randn(2, l, 2, 16, generator=gen, dtype=dtype)
    C = torch.randn(2, l, 2, 16, generator=gen, dtype=dtype)
    Bh, Ch = B.repeat_interleave(2, 2), C.repeat_interleave(2, 2)
    M = torch.einsum("bthn,bshn->bhts", Ch, Bh) / l  # the explicit L×L matrix
    expected = torch.einsum("bhts,bshp->bthp", M, x)
    out = global_matrix_mix(x, B, C)
    assert out.dtype == dtype
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out, expected, **tol)


def test_segsum_is_stable_and_exact():
    a = -torch.rand(3, 10, dtype=torch.float64)
    out = segsum(a)
    for t in range(10):
        for s in range(10):
            if s > t:
                assert out[0, t, s] == -math.inf
            else:
                torch.testing.assert_close(out[:, t, s], a[:, s + 1 : t + 1].sum(-1))


@pytest.mark.parametrize(("trap", "rot"), [(False, False), (True, False), (False, True), (True, True)])
def test_gradcheck(trap, rot):
    inp = make_inputs(b=1, l=6, h=2, p=2, g=1, n=4, s=1, dtype=torch.float64, seed=2, trap=trap, rot=rot)
    names = [k for k, v in inp.items() if v is not None]

    def fn(*tensors):
        return ssd(**dict(zip(names, tensors, strict=True)), chunk_size=4)

    tensors = [inp[k].clone().requires_grad_(True) for k in names]
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5)


def test_gradcheck_matrix_path():
    gen = torch.Generator().manual_seed(0)
    x, B, C = (torch.randn(1, 5, 2, n, generator=gen, dtype=torch.float64, requires_grad=True) for n in (2, 3, 3))
    assert torch.autograd.gradcheck(global_matrix_mix, (x, B, C))


def test_bf16_autocast_close_to_float32():
    inp = make_inputs(l=70, seed=4)
    ref = ssd(**inp, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ssd(**{k: (v.bfloat16() if v is not None else None) for k, v in inp.items()}, chunk_size=16)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_chunk_size_does_not_change_result():
    inp = make_inputs(l=100, seed=9)
    outs = [ssd(**inp, chunk_size=q) for q in (1, 8, 32, 100, 128)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named():
    inp = make_inputs(l=10)
    with pytest.raises(ValueError, match=r"`dt` must have shape"):
        ssd(**{**inp, "dt": inp["dt"][:, :5]})
    with pytest.raises(ValueError, match=r"multiple of the groups"):
        ssd(**{**inp, "B": torch.randn(2, 10, 3, 16), "C": torch.randn(2, 10, 3, 16)})
    with pytest.raises(ValueError, match=r"`x` must be a floating-point"):
        ssd(**{**inp, "x": torch.ones(2, 10, 4, 8, dtype=torch.int64)})
    bad_dt = inp["dt"].clone()
    bad_dt[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"`dt` .* contains NaN"):
        ssd(**{**inp, "dt": bad_dt})
    with pytest.raises(ValueError, match=r"`C` must have the shape of `B`"):
        ssd(**{**inp, "C": inp["C"][..., :8]})
    with pytest.raises(ValueError, match=r"`omega` rotates"):
        ssd(**{**inp, "omega": torch.randn(2, 10, 4, 9)})
    with pytest.raises(ValueError, match=r"chunk_size"):
        ssd(**inp, chunk_size=0)


def test_fused_on_cpu_is_a_clear_error():
    inp = make_inputs(l=10)
    with pytest.raises(RuntimeError, match=r"needs an NVIDIA GPU.*backend='torch'"):
        ssd(**inp, backend="fused")
    # auto uses the pure-PyTorch path for CPU tensors
    torch.testing.assert_close(ssd(**inp, backend="auto"), ssd(**inp, backend="torch"))


class SSDModule(torch.nn.Module):
    def __init__(self, D, chunk_size):
        super().__init__()
        self.D = torch.nn.Parameter(D)
        self.chunk_size = chunk_size

    def forward(self, x, dt, A, B, C, lam, omega):
        return ssd(x, dt, A, B, C, self.D, lam, omega, chunk_size=self.chunk_size), global_matrix_mix(x, B, C)


def test_exports_to_onnx_runtime_and_openvino(tmp_path):
    from helpers import export_and_compare

    # 70 tokens in chunks of 8: padding, and a recursive pass over the 9 chunk states
    inp = make_inputs(l=70, seed=21)
    args = tuple(inp[k] for k in ("x", "dt", "A", "B", "C", "lam", "omega"))
    diffs = export_and_compare(SSDModule(inp["D"], chunk_size=8), args, tmp_path, atol=1e-4)
    assert max(diffs.values()) <= 1e-4


def test_exclusive_segsum():
    from anomalib_mambaadv2.components.ssd import _segsum_st

    a = -torch.rand(2, 7, dtype=torch.float64)
    out = _segsum_st(a, exclusive=True).transpose(-1, -2)  # [t, s]
    for t in range(7):
        for s in range(7):
            if s >= t:
                assert out[0, t, s] == -math.inf
            else:
                torch.testing.assert_close(out[:, t, s], a[:, s + 1 : t].sum(-1))


def test_rotate_halves_turns_dims_i_and_s_plus_i():
    """Pair i of the state is the complex number v_i + i·v_{S+i}; rotating it is multiplying by e^{iθ}."""
    from anomalib_mambaadv2.components.ssd import _rotate_halves

    gen = torch.Generator().manual_seed(0)
    B, C = torch.randn(3, 11, 16, generator=gen), torch.randn(3, 11, 16, generator=gen)
    theta = torch.rand(3, 11, 4, generator=gen) * 6
    for v, turned in zip((B, C), _rotate_halves(B, C, theta), strict=True):
        z = torch.complex(v[..., :4], v[..., 4:8]) * torch.polar(torch.ones_like(theta), theta)
        torch.testing.assert_close(turned[..., :4], z.real)
        torch.testing.assert_close(turned[..., 4:8], z.imag)
        assert torch.equal(turned[..., 8:], v[..., 8:])  # dims >= 2S are not rotated


def test_sequences_matrix_gain_adds_the_dual_form_with_ones_mask():
    """ssd_sequences(matrix_gain=g) == ssd + g · (1/L) C̃ B̃ᵀ (s ⊙ x): the same discretised SSM, all-ones mask."""
    from anomalib_mambaadv2.components.ssd import _trapezoid_weights, ssd_sequences

    inp = make_inputs(b=1, l=45, h=3, g=3, seed=11)
    b, l, h, _ = inp["x"].shape

    def seqs(t):
        return t.transpose(1, 2).reshape(b * h, l, *t.shape[3:])

    gain = torch.rand(h, generator=torch.Generator().manual_seed(1)) + 0.5
    args = [seqs(inp[k]) for k in ("x", "dt", "A")]
    # no rotation here: the matrix path is checked on plain B, C
    out = ssd_sequences(*args, seqs(inp["B"]), seqs(inp["C"]), None, seqs(inp["lam"]), matrix_gain=gain, chunk_size=8)
    base = ssd_sequences(*args, seqs(inp["B"]), seqs(inp["C"]), None, seqs(inp["lam"]), chunk_size=8)
    s, _ = _trapezoid_weights(inp["dt"], inp["lam"])
    mix = global_matrix_mix(inp["x"] * s.unsqueeze(-1), inp["B"], inp["C"])  # (b, l, h, p)
    expected = base + gain[:, None, None] * seqs(mix)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


# ---- factorised within-chunk decay (fast path) against the segment-sum form and the step-by-step reference ----
def scan_inputs(S=3, L=300, P=4, N=6, dtype=torch.float64, seed=0, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    x, B, C = (torch.randn(S, L, k, generator=gen, dtype=dtype) for k in (P, N, N))
    a = -strength * torch.rand(S, L, generator=gen, dtype=dtype)
    return x, a, B, C


def scan_reference(x, a, B, C):
    """h_t = e^{a_t} h_{t-1} + B_tᵀ x_t, y_t = h_t C_t, one token at a time."""
    h = x.new_zeros(x.shape[0], B.shape[-1], x.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(a[:, t, None, None]) * h + B[:, t, :, None] * x[:, t, None, :]
        ys.append((C[:, t, None, :] @ h)[:, 0])
    return torch.stack(ys, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("L", "chunk", "strength"), [(300, 32, 1.0), (1000, 16, 3.5), (77, 8, 7.0), (2048, 32, 0.01)])
def test_factorised_scan_matches_reference(dtype, L, chunk, strength):
    from anomalib_mambaadv2.components.ssd import FACTOR_LIMIT, _chunked_scan

    assert chunk * strength <= 2 * FACTOR_LIMIT[dtype]  # inside the guard: the factorised form runs
    inp = scan_inputs(L=L, dtype=dtype, seed=L, strength=strength)
    ref = scan_reference(*(t.double() for t in inp))
    fast, cb = _chunked_scan(*inp, chunk, factorise=True)
    safe, cb_safe = _chunked_scan(*inp, chunk, factorise=False)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(fast.double(), ref, **tol)
    torch.testing.assert_close(fast, safe, **tol)
    torch.testing.assert_close(cb, cb_safe, **tol)


def test_factorised_scan_gradients():
    from anomalib_mambaadv2.components.ssd import _chunked_scan

    # L = 40 with chunk 4: 10 chunks > 4, so the recursive chunk-state pass runs too
    tensors = [t.clone().requires_grad_(True) for t in scan_inputs(S=2, L=40, P=2, N=3, strength=2.0)]
    assert torch.autograd.gradcheck(lambda *t: _chunked_scan(*t, 4, factorise=True)[0], tensors, eps=1e-6, atol=1e-6)
    # float32 gradients agree with float64 on a long, strongly decaying sequence
    inp = scan_inputs(S=2, L=512, P=4, N=4, strength=3.5, seed=5)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        ts = [t.to(dtype).detach().requires_grad_(True) for t in inp]
        _chunked_scan(*ts, 32, factorise=True)[0].pow(2).sum().backward()
        grads[dtype] = [t.grad.double() for t in ts]
    for g64, g32 in zip(grads[torch.float64], grads[torch.float32], strict=True):
        torch.testing.assert_close(g32, g64, rtol=1e-3, atol=1e-3)


def test_factorised_guard_falls_back_on_strong_decay():
    from anomalib_mambaadv2.components import ssd as ssd_module

    # span of one 32-token chunk up to 32 · 50 = 1600 ≫ 2·60: e^{±800} would overflow float32 (and float64)
    inp = scan_inputs(S=2, L=96, strength=50.0, dtype=torch.float32, seed=3)
    ref = scan_reference(*(t.double() for t in inp))
    forced, _ = ssd_module._chunked_scan(*inp, 32, factorise=True)
    assert not torch.isfinite(forced).all()  # the unguarded factorisation breaks here ...
    checked, _ = ssd_module._chunked_scan(*inp, 32)  # ... the data check picks the segment-sum form
    assert torch.isfinite(checked).all()
    torch.testing.assert_close(checked.double(), ref, rtol=1e-4, atol=1e-4)
    # ssd_sequences trusts a caller's bound only when it fits the range; otherwise the data decide
    x, a, B, C = inp
    dt, A = torch.ones_like(a), a
    out = ssd_module.ssd_sequences(x, dt, A, B, C, chunk_size=32, max_log_decay=50.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_hss_decay_bound_holds(monkeypatch):
    from anomalib_mambaadv2.components import hss as hss_module

    core = hss_module.HSSCore(16, grid_size=(8, 8))
    with torch.no_grad():  # A ≈ −10 and Δ ≈ 3: −Δ A far beyond the bound before clamping
        core.a_bias.fill_(10.0)
        core.dt_bias.fill_(3.0)
    seen, real = {}, hss_module.ssd_sequences

    def spy(x, dt, A, *args, **kwargs):
        seen["log_decay"], seen["bound"] = float((-dt * A).max().detach()), kwargs["max_log_decay"]
        return real(x, dt, A, *args, **kwargs)

    monkeypatch.setattr(hss_module, "ssd_sequences", spy)
    assert torch.isfinite(core(torch.randn(2, 8, 8, 16))).all()
    assert seen["bound"] == hss_module.MAX_LOG_DECAY
    assert seen["log_decay"] == pytest.approx(hss_module.MAX_LOG_DECAY, abs=1e-4)


def test_segsum_keeps_small_segments_after_a_huge_decay():
    # a_0 = -1e8 then tiny steps: in float32 cumsum[t] - cumsum[s] loses every step after a_0 (1e-3 ≪ ulp(1e8) = 8);
    # the masked segment sum never adds a_0 into a segment that excludes it
    a = torch.full((1, 16), -1e-3, dtype=torch.float32)
    a[0, 0] = -1e8
    exact = segsum(a.double())
    stable = segsum(a)
    cum = torch.cumsum(a, -1)
    naive = cum[..., :, None] - cum[..., None, :]
    lower = torch.tril(torch.ones(16, 16, dtype=torch.bool), diagonal=-1)
    assert (naive - exact)[0][lower].abs().max() > 1e-3  # the naive form is wrong here ...
    torch.testing.assert_close(stable[0][lower].double(), exact[0][lower], rtol=1e-6, atol=1e-9)  # ... this is not


def test_sequences_matrix_path_with_rotation_matches_explicit_float64():
    """ssd_sequences(matrix_gain=g) with trapezoid and rotation == step-by-step scan + g (1/L) (C̃ B̃ᵀ)(s ⊙ x)."""
    from anomalib_mambaadv2.components.ssd import ssd_sequences

    inp = make_inputs(b=2, l=70, h=3, g=3, p=4, n=8, s=2, dtype=torch.float64, seed=12)
    x, dt, lam, omega = inp["x"], inp["dt"], inp["lam"], inp["omega"]
    b, l, h, _ = x.shape
    # a large gain, so the matrix path is a large part of the output (with 1/L it is small at HSS's gain of 0.5)
    gain = 10.0 * torch.rand(h, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 5.0
    # explicit: rotate the pairs of dims (i, S+i) by θ_t = Σ_{r<=t} ω_r Δ_r, then the full L×L all-ones-mask dual form
    theta = torch.cumsum(omega * dt[..., None], 1)
    cos, sin = theta.cos(), theta.sin()

    def rotate(v):
        first, second = v[..., 0:2], v[..., 2:4]
        return torch.cat((first * cos - second * sin, first * sin + second * cos, v[..., 4:]), -1)

    Bt, Ct = rotate(inp["B"]), rotate(inp["C"])
    s = lam * dt + torch.cat(((1 - lam) * dt, torch.zeros_like(dt[:, :1])), 1)[:, 1:]
    M = torch.einsum("bthn,bshn->bhts", Ct, Bt) / l
    expected = ssd_reference(**inp) + gain[:, None] * torch.einsum("bhts,bshp->bthp", M, x * s[..., None])

    def seqs(t):
        return t.transpose(1, 2).reshape(b * h, l, *t.shape[3:])

    args = [seqs(t) for t in (x, dt, inp["A"], inp["B"], inp["C"])]
    out = ssd_sequences(*args, inp["D"].repeat(b), seqs(lam), seqs(omega), matrix_gain=gain.repeat(b), chunk_size=8)
    out = out.reshape(b, h, l, -1).transpose(1, 2)
    without = ssd_sequences(*args, inp["D"].repeat(b), seqs(lam), seqs(omega), chunk_size=8)
    matrix_part = (out - without.reshape(b, h, l, -1).transpose(1, 2)).abs().max()
    assert matrix_part > 0.3 * expected.abs().max()  # not dominated by the scan
    err = float((out - expected).abs().max() / matrix_part)
    assert err < 1e-12, err
