"""FDG, TCFG and MAMBO-G (apg/rules.py) against the installed Diffusers' guiders on the same tensors and against
float64 transcriptions written here (an independent Laplacian pyramid, an SVD, the MAMBO-G formula); then the
three through apg.guide in a tiny SD pipeline, against hand-written DDIM loops in x0 and in raw space.

Diffusers' FrequencyDecoupledGuidance needs kornia: those comparisons skip without it. Two Diffusers quirks the
tests work around, both in the installed 0.42: MagnitudeAwareGuidance takes torch.norm over dims [1, 2, 3], which
torch refuses on 4-D tensors, so images go to it flattened to [B, C, H*W] (the same per-sample norms); and
FrequencyDecoupledGuidance returns the padded size for sizes kornia pads (12 x 12 comes back 16 x 16), so its
output is cropped to the input's size before comparing. TangentialClassifierFreeGuidance takes a float32 SVD:
it sits ~1e-6 from float64 on these sizes, apg ~1e-7.
"""

import json
import math

import pytest
from packaging.version import Version
import torch
from tiny_pipelines import make_scheduler, rel_diff, tiny_sd_pipeline

import apg
from apg import FDG, TCFG, Guidance, MamboG

guiders = pytest.importorskip("diffusers.guiders")

pytestmark = pytest.mark.usefixtures("single_thread")


def pair(shape, seed=0, spread=0.3, dtype=torch.float32):
    """(cond, uncond) correlated as real predictions are: uncond = cond + spread * noise."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(shape, generator=g, dtype=torch.float64)
    return cond.to(dtype), (cond + spread * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


# -- float64 references ------------------------------------------------------------------------------------------
TAPS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16


def reflect_index(n, before, after):
    """Indices of a reflect-padded axis of length n (mirror about the edge sample, which is not repeated)."""
    index = torch.arange(-before, n + after).abs()
    return torch.where(index > n - 1, 2 * (n - 1) - index, index)


def ref_blur(x):
    """Separable binomial blur of the last two axes, borders reflected by index."""
    h, w = x.shape[-2:]
    padded = x[..., reflect_index(h, 2, 2), :][..., reflect_index(w, 2, 2)]
    rows = sum(TAPS[k] * padded[..., k:k + h, :] for k in range(5))
    return sum(TAPS[k] * rows[..., k:k + w] for k in range(5))


def ref_down(x):
    """Blur, then the mean of each 2 x 2 block (bilinear at scale 1/2, half-pixel centres)."""
    b = ref_blur(x)
    return b.unflatten(-2, (b.shape[-2] // 2, 2)).unflatten(-1, (b.shape[-1] // 2, 2)).mean((-3, -1))


def ref_double(x, axis):
    """Bilinear 2x along `axis` with half-pixel centres: 3/4 of the nearest sample, 1/4 of the next, edges held."""
    n = x.shape[axis]
    i = torch.arange(n)
    near, before, after = (x.index_select(axis, j) for j in (i, (i - 1).clamp(min=0), (i + 1).clamp(max=n - 1)))
    return torch.stack([0.75 * near + 0.25 * before, 0.75 * near + 0.25 * after], dim=axis + 1).flatten(axis, axis + 1)


def ref_up(x):
    return ref_blur(ref_double(ref_double(x, x.ndim - 2), x.ndim - 1))


def ref_padded(h, w, levels):
    """kornia's size rule: both sides to the next power of two unless one is a power of two and both divide."""
    power = lambda n: 2 ** math.ceil(math.log2(n))  # noqa: E731
    keep = (power(h) == h or power(w) == w) and h % 2 ** (levels - 1) == 0 and w % 2 ** (levels - 1) == 0
    return (h, w) if keep else (power(h), power(w))


def ref_fdg(cond, uncond, scales, weights):
    """FDG in float64, per frame for video: pyramid, u + s (eta par + orth) per level (c where s = 1), inverse."""
    cond, uncond = cond.double(), uncond.double()
    h, w = cond.shape[-2:]
    ph, pw = ref_padded(h, w, len(scales))
    pad = lambda x: x[..., reflect_index(h, 0, ph - h), :][..., reflect_index(w, 0, pw - w)]  # noqa: E731

    def pyramid(x):
        gaussian = [pad(x)]
        for _ in scales[1:]:
            gaussian.append(ref_down(gaussian[-1]))
        return [g - ref_up(n) for g, n in zip(gaussian, gaussian[1:])] + [gaussian[-1]]

    levels = []
    for c, u, s, eta in zip(pyramid(cond), pyramid(uncond), scales, weights):
        d = c - u
        dims = tuple(range(1, c.ndim))  # the whole sample: channels, frames and pixels
        par = (d * c).sum(dims, keepdim=True) / (c * c).sum(dims, keepdim=True) * c
        levels.append(c if s == 1 else u + s * (eta * par + (d - par)))
    image = levels[-1]
    for band in reversed(levels[:-1]):
        image = ref_up(image) + band
    return image[..., :h, :w]


def ref_tcfg(cond, uncond, w):
    """TCFG in float64 by SVD: uncond projected onto the first right-singular vector of [cond; uncond]."""
    c, u = cond.double().flatten(1), uncond.double().flatten(1)
    v = torch.linalg.svd(torch.stack([c, u], 1), full_matrices=False)[2][:, 0]  # [B, N]
    projected = ((u * v).sum(1, keepdim=True) * v).view(cond.shape)
    return projected + w * (cond.double() - projected)


def ref_mambo(cond, uncond, w, alpha):
    """MAMBO-G in float64: u + (1 + (w - 1) exp(-alpha ||c - u|| / ||u||)) (c - u), per sample."""
    c, u = cond.double(), uncond.double()
    ratio = (c - u).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    weight = (1 + (w - 1) * torch.exp(-alpha * ratio)).view((-1,) + (1,) * (c.ndim - 1))
    return u + weight * (c - u)


def test_float64_pyramid_reference_inverts_and_matches_kornia():
    """The test's own pyramid is right: it inverts exactly, and equals kornia's where kornia is installed."""
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    bands = [x]
    for _ in range(2):
        bands.append(ref_down(bands[-1]))
    lap = [g - ref_up(n) for g, n in zip(bands, bands[1:])] + [bands[-1]]
    image = lap[-1]
    for band in reversed(lap[:-1]):
        image = ref_up(image) + band
    assert rel_diff(image, x) < 1e-14
    kornia = pytest.importorskip("kornia")
    theirs = kornia.geometry.transform.build_laplacian_pyramid(x, 3)
    assert all(rel_diff(a, b) < 1e-12 for a, b in zip(lap, theirs))


# -- on the same tensors as Diffusers --------------------------------------------------------------------------
IMAGE_SHAPES = [(2, 4, 16, 16), (2, 4, 12, 12), (2, 3, 13, 16), (2, 4, 24, 40), (2, 4, 8, 8)]  # 8 x 8: 2 x 2 at L = 3


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
@pytest.mark.parametrize("scales, weights", [((1.0, 0.5), None), ((1.0, 0.6, 0.3), None),
                                             ((1.0, 0.5), (0.3, 0.7)), ((1.2, 0.6, 0.3), (0.0, 0.5, 1.0))])
def test_fdg_equals_diffusers_and_the_float64_pyramid(shape, scales, weights):
    cond, uncond = pair(shape)
    w = 6.0
    ours = FDG(w, scales, weights)(cond, uncond)
    per_level = [w * g for g in scales]
    reference = ref_fdg(cond, uncond, per_level, weights or [1.0] * len(scales))
    assert ours.shape == cond.shape and rel_diff(ours, reference) < 1e-6
    kornia = pytest.importorskip("kornia", reason="Diffusers' FrequencyDecoupledGuidance needs kornia")
    if shape[-2] % 2 and Version(kornia.__version__) < Version("0.9"):
        pytest.skip(f"kornia {kornia.__version__} cannot build the pyramid of an odd, unpadded side (0.9 pads it)")
    guider = guiders.FrequencyDecoupledGuidance(guidance_scales=per_level,
                                                parallel_weights=None if weights is None else list(weights))
    theirs = guider.forward(cond, uncond).pred[..., : shape[-2], : shape[-1]]  # padded sizes come back padded
    assert rel_diff(ours, theirs) < 1e-5


def test_fdg_on_video_is_a_pyramid_per_frame_with_one_projection_per_sample():
    cond, uncond = pair((2, 3, 4, 16, 16))
    ours = FDG(5.0, (1.0, 0.4), (0.2, 0.8))(cond, uncond)
    assert rel_diff(ours, ref_fdg(cond, uncond, [5.0, 2.0], [0.2, 0.8])) < 1e-6
    # Without projection each frame is independent: Diffusers on the frames as a batch.
    plain = FDG(5.0, (1.0, 0.4))(cond, uncond)
    frames = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  [B*T, C, H, W]
    assert rel_diff(frames(plain), FDG(5.0, (1.0, 0.4))(frames(cond), frames(uncond))) < 1e-6
    pytest.importorskip("kornia", reason="Diffusers' FrequencyDecoupledGuidance needs kornia")
    theirs = guiders.FrequencyDecoupledGuidance(guidance_scales=[5.0, 2.0]).forward(frames(cond), frames(uncond)).pred
    assert rel_diff(frames(plain), theirs) < 1e-5


def test_fdg_original_formulation_converts_to_w_plus_1_and_a_rescaled_parallel_weight():
    """Diffusers' use_original_formulation (s, eta) per level: apg's w_k = s + 1, eta_k = (s eta + 1) / (s + 1)."""
    pytest.importorskip("kornia", reason="Diffusers' FrequencyDecoupledGuidance needs kornia")
    cond, uncond = pair((2, 4, 16, 16))
    s, eta = [9.0, 4.0], [0.5, 0.2]
    theirs = guiders.FrequencyDecoupledGuidance(guidance_scales=s, parallel_weights=eta,
                                                use_original_formulation=True).forward(cond, uncond).pred
    ours = FDG(1.0, [k + 1 for k in s], [(k * e + 1) / (k + 1) for k, e in zip(s, eta)])(cond, uncond)
    assert rel_diff(ours, theirs) < 1e-5
    assert rel_diff(FDG(1.0, [k + 1 for k in s], eta)(cond, uncond), theirs) > 1e-3  # eta unconverted: not it


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (2, 64, 8)])  # images, packed tokens
@pytest.mark.parametrize("w", [0.0, 1.5, 4.0, 8.0])
def test_tcfg_equals_diffusers_and_an_svd(shape, w):
    cond, uncond = pair(shape)
    ours = TCFG(w)(cond, uncond)
    assert rel_diff(ours, guiders.TangentialClassifierFreeGuidance(guidance_scale=w).forward(cond, uncond).pred) < 1e-5
    assert rel_diff(ours, ref_tcfg(cond, uncond, w)) < 1e-6
    theirs = guiders.TangentialClassifierFreeGuidance(guidance_scale=w - 1, use_original_formulation=True)
    assert rel_diff(ours, theirs.forward(cond, uncond).pred) < 1e-5  # the original formulation: s = w - 1


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (2, 64, 8), (2, 3, 2, 8, 8)])  # images, packed tokens, video
@pytest.mark.parametrize("w, alpha", [(1.5, 8.0), (6.0, 8.0), (10.0, 2.0), (4.0, 0.0)])
def test_mambo_g_equals_diffusers_and_the_formula(shape, w, alpha):
    cond, uncond = pair(shape)
    ours = MamboG(w, alpha)(cond, uncond)
    flat = lambda x: x.flatten(2)  # noqa: E731  Diffusers' torch.norm(dim=[1, 2, 3]) fails on 4-D tensors
    for config in (dict(guidance_scale=w), dict(guidance_scale=w - 1, use_original_formulation=True)):
        theirs = guiders.MagnitudeAwareGuidance(alpha=alpha, **config).forward(flat(cond), flat(uncond)).pred
        assert rel_diff(ours, theirs.view(shape)) < 1e-5
    assert rel_diff(ours, ref_mambo(cond, uncond, w, alpha)) < 1e-6
    if alpha == 0:
        assert rel_diff(ours, apg.CFG(w)(cond, uncond)) < 1e-6


def test_at_w_1_each_is_the_conditional_prediction():
    """...and says so (at_one, needs_uncond: apg.guide skips the unconditional pass then); FDG's w = 1 is the
    conditional model only when every level's scale is 1."""
    cond, uncond = pair((2, 4, 16, 16))
    for rule in (FDG(1.0, (1.0, 1.0), (0.3, 0.3)), FDG(2.0, (0.5, 0.5)), TCFG(1.0), MamboG(torch.tensor([1.0, 1.0]))):
        assert rel_diff(rule(cond, uncond), cond) < 1e-6 and rule.at_one() and not rule.needs_uncond(1.0, 0), rule
    for rule in (FDG(1.0), FDG(torch.tensor([1.0, 1.0])), TCFG(1.5), MamboG(torch.tensor([1.0, 2.0]))):
        assert not rule.at_one() and rule.needs_uncond(1.0, 0), rule
    assert rel_diff(FDG(1.0)(cond, uncond), cond) > 1e-2  # its low band guided at 0.5


@pytest.mark.parametrize("shape", IMAGE_SHAPES + [(1, 2, 3, 16, 24)])
def test_fdg_with_equal_levels_is_cfg(shape):
    """The pyramid is linear and inverts exactly, padding and cropping included."""
    cond, uncond = pair(shape)
    assert rel_diff(FDG(7.0, (1.0, 1.0, 1.0))(cond, uncond), apg.CFG(7.0)(cond, uncond)) < 1e-6


@pytest.mark.parametrize("rule", [FDG(4.0, (1.0, 0.5), (0.5, 1.0)), TCFG(4.0), MamboG(4.0, 3.0)])
def test_per_sample_scales_and_16_bit_inputs(rule):
    cond, uncond = pair((3, 4, 16, 16))
    scales = torch.tensor([1.5, 4.0, 9.0])
    batched = type(rule).from_dict({**rule.to_dict(), "guidance_scale": scales.tolist()})(cond, uncond)
    for i, w in enumerate(scales.tolist()):
        single = type(rule).from_dict({**rule.to_dict(), "guidance_scale": w})(cond[i:i + 1], uncond[i:i + 1])
        assert rel_diff(batched[i:i + 1], single) < 1e-6
    for dtype in (torch.float16, torch.bfloat16):
        low = rule(cond.to(dtype), uncond.to(dtype))
        assert low.dtype == dtype and rel_diff(low, rule(cond, uncond)) < 1e-2


def test_degenerate_inputs_stay_finite():
    zero, x = torch.zeros(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    orthogonal = torch.stack([x[0], torch.zeros_like(x[0])]), torch.stack([torch.zeros_like(x[1]), x[1]])
    for cond, uncond in [(zero, zero), (x, zero), (zero, x), (x, x), orthogonal]:
        for rule in (FDG(4.0, (1.0, 0.5), (0.5, 0.5)), TCFG(4.0), MamboG(4.0)):
            assert torch.isfinite(rule(cond, uncond)).all(), (rule, cond.abs().sum(), uncond.abs().sum())
    assert torch.equal(MamboG(4.0)(x, zero), x)  # u = 0: the ratio is infinite, the scale 1


def test_interval_is_the_base_classes():
    cond, uncond = pair((1, 4, 16, 16))
    for cls, args in ((FDG, (4.0,)), (TCFG, (4.0,)), (MamboG, (4.0,))):
        rule = cls(*args, interval=(1.0, 5.0))
        assert torch.equal(rule(cond, uncond, sigma=0.5), cond)
        assert torch.equal(rule(cond, uncond, sigma=2.0), cls(*args)(cond, uncond))
        with pytest.raises(ValueError, match="sigma=None"):
            rule(cond, uncond)


# -- construction, config, errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("g", [FDG(10.0), FDG(torch.tensor([2.0, 5.0]), [1.0, 0.5, 0.25], 0.5, interval=(0.28, 5.42)),
                               TCFG(3.0), MamboG(10.0, alpha=4.0, interval=(0.0, math.inf))])
def test_config_round_trip(g):
    config = json.loads(json.dumps(g.to_dict()))
    again = Guidance.from_dict(config)
    assert type(again) is type(g) and again == g and repr(again) == repr(g)
    if not isinstance(g.guidance_scale, torch.Tensor):  # copy-as-code: the repr is the constructor call
        assert eval(repr(g), {type(g).__name__: type(g), "inf": math.inf}) == g


def test_fdg_defaults_are_diffusers_at_w_10():
    g = FDG(10.0)
    assert [10.0 * s for s in g.guidance_scales] == [10.0, 5.0] and g.parallel_weights is None
    assert FDG(2.0, (1.0, 0.5, 0.25), 0.5).parallel_weights == (0.5, 0.5, 0.5)  # one number: every level


@pytest.mark.parametrize("call, exc, words", [
    (lambda: FDG(4.0, ()), TypeError, r"guidance_scales must be a non-empty sequence of numbers, got \(\)"),
    (lambda: FDG(4.0, "1 0.5"), TypeError, r"guidance_scales .* got '1 0.5'"),
    (lambda: FDG(4.0, (1.0, -0.5)), ValueError, r"guidance_scales must be each >= 0.0, got \(1.0, -0.5\)"),
    (lambda: FDG(4.0, (1.0, math.nan)), ValueError, r"guidance_scales must be finite, got nan"),
    (lambda: FDG(4.0, (1.0, 0.5), (0.5,)), ValueError, r"parallel_weights must have one value per level \(2"),
    (lambda: FDG(4.0, (1.0, 0.5), 1.5), ValueError, r"parallel_weights must be each in \[0.0, 1.0\], got \(1.5, 1.5\)"),
    (lambda: FDG(-1.0), ValueError, "guidance_scale must be >= 0.0, got -1.0"),
    (lambda: MamboG(4.0, alpha=-1.0), ValueError, r"alpha must be >= 0.0, got -1.0"),
    (lambda: MamboG(4.0, alpha="8"), TypeError, r"alpha must be a real number, got '8'"),
    (lambda: TCFG(math.inf), ValueError, "guidance_scale must be finite, got inf"),
])
def test_bad_construction_names_the_argument_and_value(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


@pytest.mark.parametrize("shape, exc, words", [
    ((2, 64, 8), apg.errors.UnsupportedError, r"got shape \(2, 64, 8\); packed tokens \[B, N, C\] have no 2-D layout"),
    ((2, 4, 4, 6), apg.errors.InputError, r"FDG with 3 levels needs height and width of at least 8 after padding, "
                                          r"got 4 x 6 \(padded to 4 x 8\)"),
])
def test_fdg_refuses_what_has_no_pyramid(shape, exc, words):
    with pytest.raises(exc, match=words):
        FDG(4.0, (1.0, 0.5, 0.25))(*pair(shape))


def test_param_tuple_kind_parses():
    param = FDG.parameters[0]
    assert param.parse("1 0.5") == param.parse("[1,0.5]") == param.parse("(1, 0.5)") == (1.0, 0.5)
    assert FDG.parameters[1].parse(" ") is None and param.bounds() == "each >= 0.0"
    with pytest.raises(ValueError, match="guidance_scales must be numbers separated by spaces, got '1 x'"):
        param.parse("1 x")


# -- in a pipeline: x0 by default, raw for parity with Diffusers -----------------------------------------------------
STEPS = 4
PROMPT, NEGATIVE = "a photo of a cat", "a blue car"
RUN = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=32, width=32, num_inference_steps=STEPS,
           output_type="latent")


def initial_latents():
    return torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def ddim_loop(pipe, rule, space):
    """DDIM (eta = 0) by hand on the tiny SD UNet: `rule(cond, uncond)` on x0 or on the noise prediction, float64."""
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
    embeds = torch.cat([uncond, cond])
    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(STEPS)
    abar = scheduler.alphas_cumprod.double()
    x = initial_latents().double()
    for t in scheduler.timesteps:
        alpha, sigma = abar[t].sqrt(), (1 - abar[t]).sqrt()  # x = alpha x0 + sigma eps
        eps = pipe.unet(torch.cat([x, x]).float(), t, encoder_hidden_states=embeds).sample.double()
        eps_uncond, eps_cond = eps.chunk(2)
        if space == "x0":
            x0 = rule((x - sigma * eps_cond) / alpha, (x - sigma * eps_uncond) / alpha)
            eps = (x - alpha * x0) / sigma
        else:
            eps = rule(eps_cond, eps_uncond)
            x0 = (x - sigma * eps) / alpha
        prev = int(t) - scheduler.config.num_train_timesteps // STEPS
        abar_prev = abar[prev] if prev >= 0 else abar[0]  # set_alpha_to_one=False
        x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
    return x.float()


def _diffusers_guider(rule):
    """Diffusers' guider of the same settings (default formulation) as a function of (cond, uncond)."""
    if isinstance(rule, TCFG):
        guider = guiders.TangentialClassifierFreeGuidance(guidance_scale=rule.guidance_scale)
        return lambda c, u: guider.forward(c, u).pred
    if isinstance(rule, MamboG):
        guider = guiders.MagnitudeAwareGuidance(guidance_scale=rule.guidance_scale, alpha=rule.alpha)
        return lambda c, u: guider.forward(c.flatten(2), u.flatten(2)).pred.view(c.shape)
    pytest.importorskip("kornia", reason="Diffusers' FrequencyDecoupledGuidance needs kornia")
    guider = guiders.FrequencyDecoupledGuidance(guidance_scales=[rule.guidance_scale * g for g in rule.guidance_scales],
                                                parallel_weights=list(rule.parallel_weights))
    return lambda c, u: guider.forward(c, u).pred


RULES = [FDG(5.0, (1.0, 0.5), (0.5, 1.0)), TCFG(5.0), MamboG(5.0, alpha=2.0)]
FLOAT64 = {FDG: lambda r: lambda c, u: ref_fdg(c, u, [r.guidance_scale * g for g in r.guidance_scales],
                                                 r.parallel_weights or [1.0] * len(r.guidance_scales)),
           TCFG: lambda r: lambda c, u: ref_tcfg(c, u, r.guidance_scale),
           MamboG: lambda r: lambda c, u: ref_mambo(c, u, r.guidance_scale, r.alpha)}


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline("ddim")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_guides_a_pipeline_in_x0_and_in_raw_space_as_diffusers(pipe, rule):
    assert type(rule).space == "x0"
    with apg.guide(pipe, rule):
        in_x0 = pipe(**RUN, latents=initial_latents())[0]
    assert rel_diff(in_x0, ddim_loop(pipe, FLOAT64[type(rule)](rule), "x0")) < 1e-4
    with apg.guide(pipe, rule, space="raw"):
        raw = pipe(**RUN, latents=initial_latents())[0]
    assert rel_diff(raw, ddim_loop(pipe, FLOAT64[type(rule)](rule), "raw")) < 1e-4
    assert rel_diff(raw, in_x0) > 1e-3  # the space matters: the comparisons have teeth
    assert rel_diff(raw, ddim_loop(pipe, _diffusers_guider(rule), "raw")) < 1e-4


# -- the front ends: a per-level knob through the CLI, the sweep and the app ------------------------------------------
def test_cli_compare_takes_per_level_knobs_and_refuses_bad_ones(tmp_path, capsys):
    from PIL import Image

    from apg.cli import main

    out = tmp_path / "fdg.png"
    fast = ["--classes", "cat", "--steps", "2", "--no-progress", "--scales", "2", "--out", str(out)]
    assert main(["compare", "--methods", "fdg", "mambo-g", "--guidance-scales", "1", "0.25", "--parallel-weights",
                 "0.5", "1", "--alpha", "3", *fast]) == 0
    record = json.loads(Image.open(out).text["apg-compare"])
    assert [Guidance.from_dict(c) for c in record["columns"]] == [FDG(2.0, (1.0, 0.25), (0.5, 1.0)), MamboG(2.0, 3.0)]
    capsys.readouterr()
    assert main(["compare", "--methods", "fdg", "--parallel-weights", "0.5", *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("apg compare: error: parallel_weights must have one value per level (2, as guidance_scales "
                   "[1.0, 0.5]), got [0.5]")
    with pytest.raises(SystemExit):
        main(["compare", "--methods", "fdg", "--guidance-scales", "1", "x", *fast])
    assert "expected a number, got 'x'" in capsys.readouterr().err


def test_sweep_records_and_labels_per_level_knobs(tmp_path):
    from apg.evaluation.cli import main
    from apg.evaluation.sweeps import collect_scores, setting_label

    out = tmp_path / "sweep"
    assert main(["sweep", "--classes", "cat", "--num-images", "2", "--steps", "2", "--methods", "fdg", "tcfg",
                 "--guidance-scales", "1", "0.25", "--scales", "3", "--out", str(out), "--no-cache"]) == 0
    run = json.loads((out / "fdg_w3" / "run.json").read_text())
    assert Guidance.from_dict(run["guidance"]) == FDG(3.0, (1.0, 0.25))
    labels = [setting_label(r) for r in collect_scores([out])]
    assert labels == ["FDG guidance_scales=[1,0.25]", "TCFG"]


def test_app_reads_per_level_knobs_as_text():
    from apg.app import logic

    request = logic.parse_request(right_method="fdg", right_guidance_scales="1 0.25", right_parallel_weights="0.5, 1",
                                  guidance_scale=4.0)
    assert request.right.build() == FDG(4.0, (1.0, 0.25), (0.5, 1.0))
    assert request.right.label() == "FDG w=4 guidance_scales=[1,0.25] parallel_weights=[0.5,1]"
    code = logic.reproduction_code(request, class_conditional=True)
    assert "apg.FDG(4.0, guidance_scales=[1.0, 0.25], parallel_weights=[0.5, 1.0])" in code
    assert logic.parse_request(right_method="fdg", right_guidance_scales=" ").right.build() == FDG(apg.SCALE.default)
    for value, words in (("1 x", "right_guidance_scales: guidance_scales must be numbers separated by spaces, "
                                 "got '1 x'"),
                         ("1 -2", r"right_guidance_scales: guidance_scales must be each >= 0.0, got \[1.0, -2.0\]")):
        with pytest.raises(logic.InputError, match=words):
            logic.parse_request(right_method="fdg", right_guidance_scales=value)
    pytest.importorskip("gradio")
    from apg.app import ui

    boxes = {c["props"].get("elem_id"): c for c in ui.build_demo().get_config_file()["components"]}
    assert boxes["right-guidance_scales"]["type"] == "textbox" and boxes["right-alpha"]["type"] == "number"


def _guider_of(rule):
    """Diffusers' guider with the rule's settings, default formulation."""
    if isinstance(rule, TCFG):
        return guiders.TangentialClassifierFreeGuidance(guidance_scale=rule.guidance_scale)
    if isinstance(rule, MamboG):
        return guiders.MagnitudeAwareGuidance(guidance_scale=rule.guidance_scale, alpha=rule.alpha)
    pytest.importorskip("kornia", reason="Diffusers' FrequencyDecoupledGuidance needs kornia")
    return guiders.FrequencyDecoupledGuidance(guidance_scales=[rule.guidance_scale * g for g in rule.guidance_scales],
                                              parallel_weights=list(rule.parallel_weights))


@pytest.mark.parametrize("name, rule", [
    ("StableDiffusion3ModularPipeline", TCFG(4.0)),  # [B, C, H, W] latents
    ("StableDiffusionXLModularPipeline", FDG(4.0, (1.0, 0.5), (0.5, 1.0))),
    ("QwenImageModularPipeline", TCFG(4.0)),  # packed tokens [B, N, C]
    ("QwenImageModularPipeline", MamboG(4.0, alpha=2.0)),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_raw_space_equals_the_stock_pipeline_with_diffusers_guider(name, rule):
    """A stock pipeline with a guider slot: Diffusers' guider there against apg's rule with space="raw"."""
    from tiny_guider import CASES, run

    pipe = CASES[name][0]()
    stock = pipe.guider
    try:
        pipe.update_components(guider=_guider_of(rule))
        reference = run(pipe, name, STEPS)
    finally:
        pipe.update_components(guider=stock)
    with apg.guide(pipe, rule, space="raw"):
        assert rel_diff(run(pipe, name, STEPS), reference) <= 1e-4
    with apg.guide(pipe, rule):  # x0, the default: another result
        assert rel_diff(run(pipe, name, STEPS), reference) > 1e-3


def test_fdg_at_w_1_still_runs_the_unconditional_pass(pipe):
    """w = 1 skips the unconditional pass for the other rules (docs/skipping.md); FDG's low band still needs it."""
    rule = FDG(1.0)  # levels at 1 and 0.5
    with apg.guide(pipe, rule):
        guided = pipe(**RUN, latents=initial_latents())[0]
    assert rel_diff(guided, ddim_loop(pipe, FLOAT64[FDG](rule), "x0")) < 1e-4
    with apg.guide(pipe, FDG(1.0, (1.0, 1.0))):  # every level at 1: the conditional model, no pass needed
        assert rel_diff(pipe(**RUN, latents=initial_latents())[0], guided) > 1e-3
