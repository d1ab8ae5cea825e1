"""The step context of a guidance call (sigma intervals, step index), CFG-Zero*, and the registry of methods.

References are independent: the float64 Algorithm 1 of guidance_helpers, Diffusers' own CFG-Zero* guider on the
same tensors, and the module-level functions the rules were built from.
"""

import inspect
import json
import math
import subprocess
import sys

import pytest
import torch
from guidance_helpers import pairs, reference, rel_err, use_implementation

import apg
from apg import APG, CFG, INTERVALS, METHODS, SCALE, CFGZeroStar, Guidance, MomentumCFG, Param, _fused
from apg.guidance import apg_torch


@pytest.fixture(params=["fused", "torch"])
def implementation(request, monkeypatch):
    return use_implementation(request.param, monkeypatch)


LOW, HIGH = INTERVALS["sdxl"]
SIGMAS = [math.inf, 14.6, HIGH, 3.0, 1.0, 0.5, LOW, 0.1]  # a descending schedule, both boundaries included
INSIDE = [LOW < s <= HIGH for s in SIGMAS]


# -- intervals ------------------------------------------------------------------------------------------------
def test_sdxl_interval_is_the_papers():
    assert INTERVALS["sdxl"] == (0.28, 5.42)


@pytest.mark.parametrize("make", [lambda i: APG(8.0, norm_threshold=2.0, interval=i), lambda i: CFG(8.0, interval=i),
                                  lambda i: MomentumCFG(8.0, norm_threshold=2.0, interval=i)])
def test_inside_outside_and_boundaries(implementation, make):
    (cond,), (uncond,) = pairs((2, 4, 8, 8))
    for sigma, inside in [(HIGH, True), (LOW, False), (3.0, True), (HIGH + 1e-9, False), (LOW + 1e-9, True),
                          (0.0, False), (math.inf, False)]:
        g, free = make((LOW, HIGH)), make(None)
        out = g(cond, uncond, sigma=sigma)
        if inside:
            assert torch.equal(out, free(cond, uncond)), sigma
        else:
            assert torch.equal(out, cond) and out is not cond, sigma
            assert g._running is None  # the momentum state did not start


def test_sigma_from_a_scheduler_table():
    (cond,), (uncond,) = pairs((2, 3, 4, 4))
    g = CFG(5.0, interval=(1.0, 2.0))
    assert torch.equal(g(cond, uncond, sigma=torch.tensor(1.5, dtype=torch.float64)), CFG(5.0)(cond, uncond))
    assert torch.equal(g(cond, uncond, sigma=torch.tensor([0.5])), cond)


def test_infinite_high_includes_pure_noise():
    (cond,), (uncond,) = pairs((2, 3, 4, 4))
    g = CFG(5.0, interval=(1.0, math.inf))
    assert torch.equal(g(cond, uncond, sigma=math.inf), CFG(5.0)(cond, uncond))
    assert torch.equal(CFG(5.0, interval=(1.0, 100.0))(cond, uncond, sigma=math.inf), cond)


@pytest.mark.parametrize("cls", ["APG", "MomentumCFG"])
def test_momentum_advances_only_inside(implementation, cls):
    conds, unconds = pairs((2, 4, 8, 8), steps=len(SIGMAS), seed=3)
    kw = dict(momentum=-0.75, norm_threshold=3.0, interval=(LOW, HIGH))
    g = APG(6.0, eta=0.25, **kw) if cls == "APG" else MomentumCFG(6.0, **kw)
    got = [g(c, u, sigma=s, step=i) for i, (c, u, s) in enumerate(zip(conds, unconds, SIGMAS))]
    inner = [i for i, inside in enumerate(INSIDE) if inside]
    assert 2 <= len(inner) <= len(SIGMAS) - 2
    expected = reference([conds[i] for i in inner], [unconds[i] for i in inner], 6.0, eta=g.eta, r=3.0, beta=-0.75)
    for i, e in zip(inner, expected):
        assert rel_err(got[i], e) < 1e-5, i
    for i, inside in enumerate(INSIDE):
        if not inside:
            assert torch.equal(got[i], conds[i]), i


def test_interval_needs_sigma():
    (cond,), (uncond,) = pairs((2, 4, 4, 4))
    for g in (APG(5.0, interval=(0.28, 5.42)), CFGZeroStar(5.0, zero_init_steps=0, interval=(0.0, 1.0))):
        with pytest.raises(ValueError, match="sigma"):
            g(cond, uncond)
        with pytest.raises(ValueError, match="sigma"):
            g(cond, uncond, step=3)


def test_calls_without_interval_are_unchanged(implementation, monkeypatch):
    """Bit for bit the functions the rules were built from, and the fused kernel still serves CPU calls."""
    conds, unconds = pairs((2, 4, 8, 8), steps=4, seed=5)
    calls = []
    real = _fused.apg
    monkeypatch.setattr(_fused, "apg", lambda *a: calls.append(1) or real(*a))
    g, plain, ctx = (APG(7.0, eta=0.1, norm_threshold=2.0) for _ in range(3))
    running = None
    for step, (c, u) in enumerate(zip(conds, unconds)):
        kernel = _fused.kernel(c)
        if kernel is not None:
            expected, running = real(kernel, c, u, running, 7.0, 0.1, 2.0, -0.5)
        else:
            expected, running = apg_torch(c, u, running, 7.0, 0.1, 2.0, -0.5)
        assert torch.equal(g(c, u), expected)
        assert torch.equal(ctx(c, u, sigma=SIGMAS[step], step=step), expected)  # context ignored without interval
        assert torch.equal(plain(c, u, sigma=1.0), expected)
    assert len(calls) == (12 if implementation == "fused" else 0)
    (c,), (u,) = pairs((2, 4, 8, 8))
    assert torch.equal(CFG(7.0)(c, u), torch.lerp(u, c, 7.0))
    assert torch.equal(CFG(7.0, interval=(0.0, math.inf))(c, u, sigma=2.0), torch.lerp(u, c, 7.0))


@pytest.mark.parametrize("kw, exc, words", [
    (dict(sigma=float("nan")), ValueError, "sigma"),
    (dict(sigma=-1.0), ValueError, "sigma"),
    (dict(sigma="1"), TypeError, "sigma"),
    (dict(sigma=torch.tensor([1.0, 2.0])), TypeError, "sigma"),
    (dict(sigma=torch.tensor(1)), TypeError, "sigma"),
    (dict(step=-1), ValueError, "step"),
    (dict(step=1.0), TypeError, "step"),
    (dict(step=True), TypeError, "step"),
])
def test_bad_step_context(kw, exc, words):
    (cond,), (uncond,) = pairs((2, 4, 4, 4))
    with pytest.raises(exc, match=words):
        APG(5.0)(cond, uncond, **kw)


# -- CFG-Zero* ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("w", [1.0, 4.0])
def test_cfg_zero_star_matches_diffusers(k, w):
    from diffusers.guiders import ClassifierFreeZeroStarGuidance

    steps = 5
    conds, unconds = pairs((2, 16, 8, 8), steps=steps, seed=11)
    ours = CFGZeroStar(w, zero_init_steps=k)
    theirs = ClassifierFreeZeroStarGuidance(guidance_scale=w, zero_init_steps=k)
    for step, (c, u) in enumerate(zip(conds, unconds)):
        theirs.set_state(step=step, num_inference_steps=steps, timestep=torch.tensor(999 - 200 * step))
        expected = theirs.forward(c, u).pred
        got = ours(c, u, step=step)
        if step < k:
            assert torch.equal(got, torch.zeros_like(c)) and torch.equal(expected, got)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_cfg_zero_star_formula_float64():
    (c,), (u,) = pairs((3, 2, 5, 5), dtype=torch.float64)
    w = torch.tensor([0.0, 3.0, 9.0], dtype=torch.float64)
    got = CFGZeroStar(w, zero_init_steps=0)(c, u)
    for i in range(3):
        alpha = (c[i] * u[i]).sum() / (u[i] * u[i]).sum()  # the 1e-8 guard moves it by ~1e-8 / ||u||^2
        torch.testing.assert_close(got[i], alpha * u[i] + w[i] * (c[i] - alpha * u[i]), rtol=1e-8, atol=1e-9)
    # u = 0: alpha = 0 instead of 0/0, so w c
    assert torch.equal(CFGZeroStar(3.0, zero_init_steps=0)(c, torch.zeros_like(u)), 3.0 * c)


def test_cfg_zero_star_dtypes_and_step_rules():
    (c,), (u,) = pairs((2, 4, 4, 4), dtype=torch.bfloat16)
    out = CFGZeroStar(4.0, zero_init_steps=0)(c, u)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, CFGZeroStar(4.0, zero_init_steps=0)(c.double(), u.double())) < 1e-2
    g = CFGZeroStar(4.0, zero_init_steps=2, interval=(1.0, 5.0))
    with pytest.raises(ValueError, match="step"):
        g(c, u, sigma=2.0)
    assert torch.equal(g(c, u, sigma=10.0, step=1), torch.zeros_like(c))  # zero-init holds outside the interval too
    assert torch.equal(g(c, u, sigma=10.0, step=2), c)
    assert torch.equal(CFGZeroStar(4.0, zero_init_steps=0)(c, u), out)  # no step needed without zero-init


# -- the registry and the bounds ------------------------------------------------------------------------------
def test_methods_table():
    assert list(METHODS) == ["cfg", "apg", "mcfg", "cfg-zero-star", "fdg", "tcfg", "mambo-g"]
    assert [cls.label for cls in METHODS.values()] == ["CFG", "APG", "MomentumCFG", "CFG-Zero*", "FDG", "TCFG",
                                                       "MAMBO-G"]
    assert [cls.space for cls in METHODS.values()] == ["x0", "x0", "x0", "raw", "x0", "x0", "x0"]
    assert apg.METHODS is METHODS and apg.SCALE is SCALE and apg.Param is Param


@pytest.mark.parametrize("cls", list(METHODS.values()))
def test_parameters_describe_the_constructor(cls):
    signature = inspect.signature(cls)
    assert list(signature.parameters) == ["guidance_scale", *(p.name for p in cls.parameters), "interval"]
    assert signature.parameters["interval"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.parameters["interval"].default is None
    for p in cls.parameters:
        assert signature.parameters[p.name].default == p.default and p.validate(p.default) == p.default, p
        assert p.help and (p.default is None or isinstance(p.default, p.kind)), p
    g = cls(SCALE.default, **{p.name: p.default for p in cls.parameters})
    assert all(getattr(g, p.name) == p.default for p in cls.parameters)


def _params_by_name():
    out = {}
    for cls in METHODS.values():
        for p in cls.parameters:
            out[p.name] = (cls, p)
    return out


def _as_taken(p, value):
    """value as the parameter takes it: one number, or each entry of a two-level tuple (FDG's default levels)."""
    return (float(value),) * 2 if p.kind is tuple else p.kind(value)


@pytest.mark.parametrize("name", sorted(_params_by_name()))
def test_bounds_are_enforced_inclusively(name):
    cls, p = _params_by_name()[name]
    step = 1 if p.kind is int else 1e-6
    cls(2.0, **{name: _as_taken(p, p.low)})
    with pytest.raises(ValueError, match=f"{name}.*{p.low - step!r}"):
        cls(2.0, **{name: _as_taken(p, p.low - step)})
    if math.isfinite(p.high):
        cls(2.0, **{name: _as_taken(p, p.high)})
        with pytest.raises(ValueError, match=name):
            cls(2.0, **{name: _as_taken(p, p.high + step)})


def test_documented_bounds():
    got = {name: (p.low, p.high, p.kind) for name, (_, p) in _params_by_name().items()}
    assert got == {"eta": (0.0, 1.0, float), "norm_threshold": (0.0, math.inf, float),
                   "momentum": (-1.0, 1.0, float), "zero_init_steps": (0, math.inf, int),
                   "guidance_scales": (0.0, math.inf, tuple), "parallel_weights": (0.0, 1.0, tuple),
                   "alpha": (0.0, math.inf, float)}
    assert (SCALE.name, SCALE.low, SCALE.high) == ("guidance_scale", 0.0, math.inf)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: CFG(-1.0), ValueError, "guidance_scale"),
    (lambda: APG(torch.tensor([2.0, -0.5])), ValueError, "guidance_scale"),
    (lambda: CFGZeroStar(2.0, zero_init_steps=1.0), TypeError, "zero_init_steps"),
    (lambda: CFGZeroStar(2.0, zero_init_steps=-1), ValueError, "zero_init_steps"),
    (lambda: APG(2.0, interval=(5.42, 0.28)), ValueError, "interval"),
    (lambda: APG(2.0, interval=(1.0, 1.0)), ValueError, "interval"),
    (lambda: APG(2.0, interval=(-0.1, 1.0)), ValueError, "interval"),
    (lambda: APG(2.0, interval=(math.inf, math.inf)), ValueError, "interval"),
    (lambda: APG(2.0, interval=(float("nan"), 1.0)), ValueError, "interval"),
    (lambda: APG(2.0, interval=(0.0, float("nan"))), ValueError, "interval"),
    (lambda: APG(2.0, interval=(0.3,)), TypeError, "interval"),
    (lambda: APG(2.0, interval="ab"), TypeError, "interval"),
    (lambda: APG(2.0, interval=0.3), TypeError, "interval"),
    (lambda: APG(2.0, interval=("0", 1.0)), TypeError, "interval"),
])
def test_bad_construction(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_interval_bounds_accepted():
    assert APG(2.0, interval=[0, math.inf]).interval == (0.0, math.inf)
    assert APG.from_preset("sdxl", 10.0, interval=INTERVALS["sdxl"]).interval == (0.28, 5.42)


@pytest.mark.parametrize("g", [
    APG(15.0, norm_threshold=15.0, interval=(0.28, 5.42)), CFG(7.5, interval=(0.0, math.inf)),
    MomentumCFG(4.0, interval=(1, 2)), CFGZeroStar(4.0, zero_init_steps=2),
    CFGZeroStar(torch.tensor([1.0, 5.0]), interval=(0.5, 3.0)),
])
def test_config_round_trip_with_interval(g):
    config = json.loads(json.dumps(g.to_dict()))
    assert ("interval" in config) == (g.interval is not None)
    again = Guidance.from_dict(config)
    assert type(again) is type(g) and again == g and repr(again) == repr(g) and again.interval == g.interval
    if g.interval is not None:
        assert f"interval={g.interval!r}" in repr(g)
    assert "interval" not in APG(2.0).to_dict() and "interval" not in repr(APG(2.0))


def test_register_method():
    class Half(Guidance):
        label = "Half CFG"
        parameters = ()

        def __init__(self, guidance_scale, *, interval=None):
            super().__init__(guidance_scale, eta=1.0, interval=interval)

    try:
        apg.register_method("half", Half)
        assert METHODS["half"] is Half and list(METHODS)[-1] == "half"
        apg.register_method("half", Half)  # the same class again: no clash
        with pytest.raises(ValueError, match="'apg'"):
            apg.register_method("apg", Half)
        with pytest.raises(TypeError, match="Guidance"):
            apg.register_method("other", object)
        with pytest.raises(ValueError, match="name"):
            apg.register_method("", Half)
    finally:
        METHODS.pop("half", None)


def test_import_apg_stays_light():
    code = "import sys, apg; apg.METHODS; apg.INTERVALS; assert 'diffusers' not in sys.modules, 'diffusers'"
    subprocess.run([sys.executable, "-c", code], check=True)
