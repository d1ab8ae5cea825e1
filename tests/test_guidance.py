"""The guidance math (apg.guidance) against an independent float64 implementation of Algorithm 1.

Every test runs twice: on the fused CPU kernel (apg/_fused_cpu.c) and on the torch ops (apg.guidance.apg_torch).
"""

import json
import math

import pytest
import torch
from guidance_helpers import pairs, reference, rel_err, use_implementation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apg
from apg import APG, CFG, PRESETS, Guidance, MomentumCFG


@pytest.fixture(autouse=True, params=["fused", "torch"])
def implementation(request, monkeypatch):
    return use_implementation(request.param, monkeypatch)


SHAPES = [(2, 4, 8, 8), (3, 16, 8), (2, 3, 2, 4, 4)]  # images, packed tokens, video


@pytest.mark.parametrize("shape", SHAPES)
def test_cfg_identity(shape):
    (cond,), (uncond,) = pairs(shape)
    expected = uncond + 7.5 * (cond - uncond)
    for g in (CFG(7.5), APG(7.5, eta=1.0, norm_threshold=0.0, momentum=0.0), MomentumCFG(7.5, momentum=0.0)):
        assert rel_err(g(cond, uncond), expected) < 1e-6, g


@pytest.mark.parametrize("shape", SHAPES)
def test_projected_update_is_orthogonal_to_cond(shape):
    (cond,), (uncond,) = pairs(shape)
    update = APG(2.0, eta=0.0, momentum=0.0)(cond, uncond) - cond  # (w - 1) * orth
    dims = tuple(range(1, cond.ndim))
    norm = torch.linalg.vector_norm
    cos = (update * cond).sum(dims) / (norm(update, dim=dims) * norm(cond, dim=dims))
    assert cos.abs().max() < 1e-5
    # and it is the whole orthogonal part, not a shrunk one
    diff = (cond - uncond).double()
    c = cond.double()
    par = ((diff * c).sum(dims, keepdim=True) / (c * c).sum(dims, keepdim=True)) * c
    assert rel_err(update, diff - par) < 1e-5


@pytest.mark.parametrize("r", [0.5, 2.0, 1e6])
def test_threshold_bounds_the_update(r):
    (cond,), (uncond,) = pairs((4, 3, 8, 8))
    w = 5.0
    update = MomentumCFG(w, momentum=0.0, norm_threshold=r)(cond, uncond) - cond
    dims = (1, 2, 3)
    norms = torch.linalg.vector_norm(update.double(), dim=dims)
    diff_norms = torch.linalg.vector_norm((cond - uncond).double(), dim=dims)
    assert torch.all(norms <= (w - 1) * r * (1 + 1e-6))
    torch.testing.assert_close(norms, (w - 1) * torch.clamp(diff_norms, max=r), rtol=1e-5, atol=0)


@pytest.mark.parametrize("cls", ["APG", "MomentumCFG"])
def test_momentum_recurrence_and_reset(cls):
    conds, unconds = pairs((2, 4, 8, 8), steps=5)
    kw = dict(momentum=-0.75, norm_threshold=3.0)
    g = APG(6.0, eta=0.25, **kw) if cls == "APG" else MomentumCFG(6.0, **kw)
    eta = 0.25 if cls == "APG" else 1.0
    expected = reference(conds, unconds, 6.0, eta=eta, r=3.0, beta=-0.75)
    got = [g(c, u) for c, u in zip(conds, unconds)]
    for step, (a, b) in enumerate(zip(got, expected)):
        assert rel_err(a, b) < 1e-5, step
    # without reset the state carries on; after it, a run repeats exactly
    assert not torch.equal(g(conds[0], unconds[0]), got[0])
    g.reset()
    again = [g(c, u) for c, u in zip(conds, unconds)]
    for a, b in zip(again, got):
        assert torch.equal(a, b)


def test_momentum_differs_from_no_momentum():
    conds, unconds = pairs((2, 4, 8, 8), steps=3)
    with_m, without = APG(5.0, momentum=-0.5), APG(5.0, momentum=0.0)
    outs = [(with_m(c, u), without(c, u)) for c, u in zip(conds, unconds)]
    assert torch.equal(outs[0][0], outs[0][1])  # running starts at 0
    assert not torch.allclose(outs[2][0], outs[2][1])


def test_per_sample_independence():
    conds, unconds = pairs((3, 4, 8, 8), steps=3)
    g = APG(torch.tensor([2.0, 7.0, 12.0]), eta=0.1, norm_threshold=2.0, momentum=-0.5)
    base = [g(c, u) for c, u in zip(conds, unconds)]
    g.reset()
    perturbed = []
    for c, u in zip(conds, unconds):
        c, u = c.clone(), u.clone()
        c[1] += 10.0 * torch.randn_like(c[1])
        perturbed.append(g(c, u))
    for a, b in zip(base, perturbed):
        assert torch.equal(a[[0, 2]], b[[0, 2]])
        assert not torch.equal(a[1], b[1])


def test_per_sample_scale_matches_scalar_runs():
    conds, unconds = pairs((3, 4, 8, 8), steps=3)
    scales = [1.0, 4.0, 15.0]
    batched = APG(torch.tensor(scales), norm_threshold=5.0, momentum=-0.5)
    got = [batched(c, u) for c, u in zip(conds, unconds)]
    for i, w in enumerate(scales):
        single = APG(w, norm_threshold=5.0, momentum=-0.5)
        for step, (c, u) in enumerate(zip(conds, unconds)):
            torch.testing.assert_close(got[step][i : i + 1], single(c[i : i + 1], u[i : i + 1]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("make", [lambda: CFG(5.0), lambda: APG(5.0, norm_threshold=2.0), lambda: MomentumCFG(5.0)])
def test_dtype_and_device_preserved(dtype, make):
    conds, unconds = pairs((2, 4, 8, 8), steps=2, dtype=dtype)
    g = make()
    for c, u in zip(conds, unconds):
        out = g(c, u)
        assert out.dtype == dtype and out.device == c.device and out.shape == c.shape
        assert torch.isfinite(out).all()
    expected = reference(conds, unconds, 5.0, eta=g.eta, r=g.norm_threshold, beta=g.momentum)[-1]
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-5)
    assert rel_err(out, expected) < tol


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.sampled_from(SHAPES + [(1, 64), (5, 2, 3)]),
    w=st.floats(0.0, 30.0),
    eta=st.floats(0.0, 1.0),
    r=st.sampled_from([0.0, 0.1, 1.0, 10.0]),
    beta=st.sampled_from([0.0, -0.5, -0.9, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_float32_matches_float64_reference(shape, w, eta, r, beta, seed):
    conds, unconds = pairs(shape, steps=3, seed=seed)
    g = APG(w, eta=eta, norm_threshold=r, momentum=beta)
    got = [g(c, u) for c, u in zip(conds, unconds)]
    for a, b in zip(got, reference(conds, unconds, w, eta=eta, r=r, beta=beta)):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("make", [lambda: APG(9.0, norm_threshold=1.0), lambda: MomentumCFG(9.0, norm_threshold=1.0), lambda: CFG(9.0)])
def test_zero_cond_and_zero_diff_stay_finite(make):
    g = make()
    zero = torch.zeros(2, 4, 8, 8)
    x = torch.randn(2, 4, 8, 8)
    for cond, uncond in [(zero, zero), (x, x), (zero, x), (x, zero)]:
        out = g(cond, uncond)
        assert torch.isfinite(out).all()
    g.reset()
    assert torch.equal(g(x, x), x)  # no difference, no guidance


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: APG(float("nan")), ValueError, "guidance_scale"),
        (lambda: APG(float("inf")), ValueError, "guidance_scale"),
        (lambda: APG(5.0, eta=float("nan")), ValueError, "eta"),
        (lambda: APG(5.0, momentum=float("-inf")), ValueError, "momentum"),
        (lambda: MomentumCFG(5.0, momentum=float("nan")), ValueError, "momentum"),
        (lambda: APG(5.0, norm_threshold=-1.0), ValueError, "norm_threshold"),
        (lambda: APG(5.0, norm_threshold=float("nan")), ValueError, "norm_threshold"),
        (lambda: APG("7.5"), TypeError, "guidance_scale"),
        (lambda: CFG(True), TypeError, "guidance_scale"),
        (lambda: APG(5.0, eta=None), TypeError, "eta"),
        (lambda: APG(torch.tensor([[1.0, 2.0]])), ValueError, "guidance_scale"),
        (lambda: APG(torch.tensor([1.0, float("nan")])), ValueError, "guidance_scale"),
        (lambda: APG(torch.tensor([1, 2])), ValueError, "guidance_scale"),
        (lambda: APG.from_preset("sd9", 5.0), ValueError, "sd9"),
    ],
)
def test_bad_construction(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


@pytest.mark.parametrize(
    "cond, uncond, exc, words",
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), ValueError, r"shape \(2, 3, 4\)"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.float64), TypeError, "float64"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, device="meta"), ValueError, "meta"),
        (torch.zeros(2, 3, 4, dtype=torch.int64), torch.zeros(2, 3, 4, dtype=torch.int64), TypeError, "int64"),
        (torch.zeros(4), torch.zeros(4), ValueError, r"ndim >= 2"),
        ([0.0], torch.zeros(2, 3), TypeError, "pred_cond"),
        (torch.zeros(3, 4), torch.zeros(3, 4), ValueError, "3 samples"),  # 2 per-sample scales, batch of 3
    ],
)
def test_bad_call(cond, uncond, exc, words):
    g = APG(torch.tensor([2.0, 3.0])) if "samples" in words else APG(5.0)
    with pytest.raises(exc, match=words):
        g(cond, uncond)


def test_momentum_state_of_another_shape_is_an_error():
    g = APG(5.0, momentum=-0.5)
    g(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="reset"):
        g(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8))
    g.reset()
    g(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8))


@pytest.mark.parametrize(
    "g",
    [CFG(7.5), APG(15.0, eta=0.0, norm_threshold=15.0, momentum=-0.5), MomentumCFG(4.0, momentum=-0.6, norm_threshold=1.0),
     APG(torch.tensor([1.0, 4.0, 8.0]))],
)
def test_config_round_trip(g):
    config = json.loads(json.dumps(g.to_dict()))
    assert config["type"] == type(g).__name__
    again = Guidance.from_dict(config)
    assert type(again) is type(g) and again == g and repr(again) == repr(g)
    assert type(g).from_dict(config) == g
    assert repr(g).startswith(type(g).__name__ + "(guidance_scale=")


def test_from_dict_errors():
    with pytest.raises(ValueError, match="'type'"):
        Guidance.from_dict({"guidance_scale": 1.0})
    with pytest.raises(ValueError, match="'PAG'"):
        Guidance.from_dict({"type": "PAG", "guidance_scale": 1.0})
    with pytest.raises(ValueError, match="'CFG'"):
        APG.from_dict(CFG(2.0).to_dict())
    with pytest.raises(ValueError, match="eta"):
        Guidance.from_dict({"type": "CFG", "guidance_scale": 2.0, "eta": 0.0})


def test_presets():
    g = APG.from_preset("sdxl", 10.0)
    assert (g.guidance_scale, g.eta, g.norm_threshold, g.momentum) == (10.0, 0.0, 15.0, -0.5)
    assert PRESETS["sd21"] == {"eta": 0.0, "norm_threshold": 7.5, "momentum": -0.75}
    assert PRESETS["edm2-s"] == {"eta": 0.0, "norm_threshold": 2.5, "momentum": -0.75}


def test_public_api_is_light():
    assert {"APG", "CFG", "MomentumCFG", "guide", "GuidancePipelineMixin", "load_builtin"} <= set(apg.__all__)
    assert math.isclose(apg.APG(2.0).guidance_scale, 2.0)
