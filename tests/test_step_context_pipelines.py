"""The step context under apg.guide: sigma intervals and CFG-Zero* against hand-written sampling loops, the sigma
and step each evaluation gets, the rule's own space, and `with pipe:` after a bare apg.guide.

The reference loops convert outputs to x0 by hand, apply Algorithm 1 in float64 only where the step's sigma lies
in the interval, and take the sampler's update by hand: DDIM (eta = 0), Euler and FlowMatch Euler. Only the
schedulers' timestep and noise tables are read from Diffusers.
"""

import contextlib
import math

import pytest
import torch
from tiny_pipelines import (
    FAMILIES,
    call,
    make_scheduler,
    rel_diff,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
)

import apg

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 5
W, BETA = 6.0, -0.5  # eta = 0, no rescaling
PROMPT, NEGATIVE = "a photo of a cat", "a blue car"


def initial_latents(shape=(1, 4, 16, 16)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


def apg_reference(x0_cond, x0_uncond, running):
    """Algorithm 1 (eta = 0, r = 0) on [B, ...] float64 tensors; returns (guided x0, new running average)."""
    diff = x0_cond - x0_uncond
    running = diff if running is None else diff + BETA * running
    dims = tuple(range(1, diff.ndim))
    parallel = (running * x0_cond).sum(dims, keepdim=True) / (x0_cond * x0_cond).sum(dims, keepdim=True) * x0_cond
    return x0_cond + (W - 1.0) * (running - parallel), running


def sigmas_of(scheduler, sampler):
    """The EDM sigma of each step, from the scheduler's tables: sqrt((1 - abar) / abar), sigma_i or s / (1 - s)."""
    scheduler.set_timesteps(STEPS)
    if sampler == "ddim":
        abar = scheduler.alphas_cumprod.double()[scheduler.timesteps]
        return ((1 - abar) / abar).sqrt().tolist()
    s = scheduler.sigmas.double()[:-1]
    return s.tolist() if sampler == "euler" else [math.inf if v == 1 else v / (1 - v) for v in s.tolist()]


def interval_for(sigmas):
    """Guide only at steps 1 and 2 of 5 (two inside, three outside), bounds between neighbouring sigmas."""
    assert len(sigmas) == STEPS and sigmas == sorted(sigmas, reverse=True)
    low = math.sqrt(sigmas[2] * sigmas[3])
    high = math.sqrt(sigmas[0] * sigmas[1]) if math.isfinite(sigmas[0]) else 2 * sigmas[1]
    return low, high


@torch.no_grad()
def sd_reference(pipe, sampler, prediction, interval):
    """SD sampling loop, DDIM (eta = 0) or Euler, guiding in x0 space only where low < sigma <= high."""
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
    embeds = torch.cat([uncond, cond])
    scheduler = pipe.scheduler
    sigmas = sigmas_of(scheduler, sampler)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    x = initial_latents().double() * float(scheduler.init_noise_sigma)
    running, inside = None, []
    for i, t in enumerate(scheduler.timesteps):
        if sampler == "ddim":
            alpha, sigma = alphas_cumprod[t].sqrt(), (1 - alphas_cumprod[t]).sqrt()  # x = alpha x0 + sigma eps
            model_input = x
        else:
            s, s_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])  # x = x0 + s eps
            alpha, sigma = 1 / math.sqrt(s**2 + 1), s / math.sqrt(s**2 + 1)  # the VP frame the model sees
            model_input = x * alpha
        out = pipe.unet(torch.cat([model_input] * 2).float(), t, encoder_hidden_states=embeds).sample.double()
        out_uncond, out_cond = out.chunk(2)
        if prediction == "epsilon":
            to_x0 = lambda o: (model_input - sigma * o) / alpha  # noqa: E731
        else:
            to_x0 = lambda o: alpha * model_input - sigma * o  # noqa: E731
        inside.append(interval[0] < sigmas[i] <= interval[1])
        x0 = to_x0(out_cond)
        if inside[-1]:  # outside: weight 1, and the running average does not move
            x0, running = apg_reference(x0, to_x0(out_uncond), running)
        if sampler == "ddim":
            prev = int(t) - scheduler.config.num_train_timesteps // STEPS
            alpha_prev_sq = alphas_cumprod[prev] if prev >= 0 else alphas_cumprod[0]  # set_alpha_to_one=False
            eps = (x - alpha * x0) / sigma
            x = alpha_prev_sq.sqrt() * x0 + (1 - alpha_prev_sq).sqrt() * eps
        else:
            x = x + (s_next - s) * (x - x0) / s  # Euler on dx/ds = (x - x0) / s
    assert inside == [False, True, True, False, False]
    return x.float()


@pytest.mark.parametrize("sampler, prediction", [("ddim", "epsilon"), ("euler", "epsilon"), ("euler", "v_prediction")])
def test_interval_matches_reference_loop(sampler, prediction):
    pipe = tiny_sd_pipeline(sampler, prediction)
    interval = interval_for(sigmas_of(make_scheduler(sampler, prediction), sampler))
    run = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=32, width=32, num_inference_steps=STEPS,
               output_type="latent")
    batches = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    with apg.guide(pipe, apg.APG(W, momentum=BETA, interval=interval)):
        guided = pipe(**run, latents=initial_latents())[0]
    hook.remove()
    assert batches == [2] * STEPS  # the unconditional pass runs outside the interval too
    with apg.guide(pipe, apg.APG(W, momentum=BETA)):
        everywhere = pipe(**run, latents=initial_latents())[0]
    reference = sd_reference(pipe, sampler, prediction, interval)
    assert rel_diff(guided, reference) <= 1e-4
    assert rel_diff(everywhere, reference) > 1e-2  # the interval changes the result: the comparison has teeth


def sd3_embeds(pipe):
    embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
        PROMPT, None, None, device="cpu", negative_prompt=NEGATIVE, max_sequence_length=16
    )
    return torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])


def sd3_velocities(pipe, embeds, x, t):
    """(v_cond, v_uncond) of the tiny SD3 transformer at float64 latents x, timestep t."""
    (text, pooled) = embeds
    velocity = pipe.transformer(hidden_states=torch.cat([x, x]).float(), timestep=t.expand(2), return_dict=False,
                                encoder_hidden_states=text, pooled_projections=pooled)[0].double()
    v_uncond, v_cond = velocity.chunk(2)
    return v_cond, v_uncond


SD3_RUN = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=16, width=16, num_inference_steps=STEPS,
               output_type="latent", max_sequence_length=16)


@torch.no_grad()
def test_interval_matches_reference_loop_flow_match():
    pipe = tiny_sd3_pipeline("flow_euler")
    sigmas = sigmas_of(pipe.scheduler, "flow")
    assert sigmas[0] == math.inf  # s = 1 at the first step
    interval = interval_for(sigmas)
    with apg.guide(pipe, apg.APG(W, momentum=BETA, interval=interval)):
        guided = pipe(**SD3_RUN, latents=initial_latents())[0]
    with apg.guide(pipe, apg.APG(W, momentum=BETA)):
        everywhere = pipe(**SD3_RUN, latents=initial_latents())[0]

    embeds, scheduler = sd3_embeds(pipe), pipe.scheduler
    scheduler.set_timesteps(STEPS)
    x, running = initial_latents().double(), None
    for i, t in enumerate(scheduler.timesteps):
        s, s_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])  # x = (1 - s) x0 + s noise
        v_cond, v_uncond = sd3_velocities(pipe, embeds, x, t)
        x0 = x - s * v_cond
        if interval[0] < sigmas[i] <= interval[1]:
            x0, running = apg_reference(x0, x - s * v_uncond, running)
        x = x + (s_next - s) * (x - x0) / s
    assert rel_diff(guided, x.float()) <= 1e-4
    assert rel_diff(everywhere, x.float()) > 1e-2


@pytest.mark.parametrize("k", [0, 1, 2])
@torch.no_grad()
def test_cfg_zero_star_matches_reference_loop(k):
    pipe = tiny_sd3_pipeline("flow_euler")
    w = 4.0
    with apg.guide(pipe, apg.CFGZeroStar(w, zero_init_steps=k)):  # its own space: the raw velocity
        guided = pipe(**SD3_RUN, latents=initial_latents())[0]
    with apg.guide(pipe, apg.CFGZeroStar(w, zero_init_steps=k), space="raw"):
        assert torch.equal(pipe(**SD3_RUN, latents=initial_latents())[0], guided)

    embeds, scheduler = sd3_embeds(pipe), pipe.scheduler
    scheduler.set_timesteps(STEPS)
    x = initial_latents().double()
    for i, t in enumerate(scheduler.timesteps):
        s, s_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
        v_cond, v_uncond = sd3_velocities(pipe, embeds, x, t)
        alpha = (v_cond * v_uncond).sum() / (v_uncond * v_uncond).sum()  # one sample
        v = torch.zeros_like(v_cond) if i < k else alpha * v_uncond + w * (v_cond - alpha * v_uncond)
        x = x + (s_next - s) * v
    assert rel_diff(guided, x.float()) <= 1e-4
    cfg = pipe(**SD3_RUN, latents=initial_latents(), guidance_scale=w)[0]
    assert rel_diff(cfg, x.float()) > 1e-2


def test_rule_space_decides_and_conflicts_are_errors():
    pipe = tiny_sd3_pipeline("flow_euler")
    zero_star = apg.CFGZeroStar(4.0)
    with pytest.raises(ValueError, match=r"space='x0' conflicts with CFGZeroStar\("):
        apg.guide(pipe, zero_star, space="x0")
    with pytest.raises(ValueError, match="space must be one of"):
        apg.guide(pipe, apg.APG(4.0), space="eps")
    from diffusers import StableDiffusion3Pipeline

    cls = type("APGStableDiffusion3Pipeline", (apg.GuidancePipelineMixin, StableDiffusion3Pipeline), {})
    mixed = cls.from_pipe(pipe)
    with pytest.raises(ValueError, match=r"space='x0' conflicts"):
        mixed(**SD3_RUN, guidance=zero_star, guidance_space="x0")
    latents = initial_latents()
    with apg.guide(pipe, zero_star):
        expected = pipe(**SD3_RUN, latents=latents)[0]
    assert torch.equal(mixed(**SD3_RUN, latents=latents, guidance=zero_star)[0], expected)


# -- the sigma and step each evaluation gets --------------------------------------------------------------
SEEN = []  # (step, sigma) per guidance call, appended by Spy (apg.guide runs a deep copy of the guidance)


class Spy(apg.CFG):
    def __call__(self, pred_cond, pred_uncond, *, sigma=None, step=None):
        SEEN.append((step, sigma))
        return super().__call__(pred_cond, pred_uncond, sigma=sigma, step=step)


def independent_sigma(scheduler, i, t):
    """The noise level of loop step i at training timestep t: sqrt((1 - abar_t) / abar_t), linear between integer
    timesteps (Euler's "linspace" spacing gives fractional ones), or s / (1 - s) with s = t / T for flow matching.
    Where the timesteps are rounded from the noise table (Karras sigmas, flow sigmas of DPM-Solver and UniPC),
    the table itself: sigma_i, or s_i / (1 - s_i)."""
    t = float(t)
    if scheduler.config.get("use_flow_sigmas"):
        s = float(scheduler.sigmas[i])
        return math.inf if s >= 1 else s / (1 - s)
    if scheduler.config.get("use_karras_sigmas"):
        return float(scheduler.sigmas[i])
    if "FlowMatch" in type(scheduler).__name__:
        s = t / scheduler.config.num_train_timesteps
        return math.inf if s >= 1 else s / (1 - s)
    abar = scheduler.alphas_cumprod.double()
    sigma = lambda i: math.sqrt((1 - float(abar[i])) / float(abar[i]))  # noqa: E731
    low = math.floor(t)
    return sigma(low) if t == low else (low + 1 - t) * sigma(low) + (t - low) * sigma(low + 1)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "pndm", "euler", "euler_a", "heun", "lms", "dpmpp_2m",
                                  "dpmpp_2m_karras", "unipc", "flow_euler", "dpmpp_2m_flow", "unipc_flow"])
def test_each_evaluation_gets_its_sigma_and_step(name):
    """Per pipeline loop iteration i (Diffusers' own step counter, from callback_on_step_end): step == i and sigma
    is that of the timestep the model evaluated. Heun evaluates twice per step and each evaluation counts:
    timesteps [t0, t1, t1, t2, ...] give sigma_0, sigma_1 (the correction at the Euler prediction), sigma_1, ..."""
    family = {"flow_euler": "sd3", "dpmpp_2m_flow": "sana", "unipc_flow": "sana"}.get(name, "sd")
    pipe = FAMILIES[family][0](scheduler=name)
    loop = []
    callback = lambda p, i, t, kwargs: loop.append((i, t)) or {}  # noqa: E731
    SEEN.clear()
    with apg.guide(pipe, Spy(3.0)):
        call(pipe, family, steps=3, callback_on_step_end=callback)
    assert [step for step, _ in SEEN] == [i for i, _ in loop] == list(range(len(loop)))
    for (_, sigma), (i, t) in zip(SEEN, loop):
        expected = independent_sigma(pipe.scheduler, i, t)
        assert sigma == expected if math.isinf(expected) else math.isclose(sigma, expected, rel_tol=1e-5), (i, t)
    if name == "heun":
        assert len(loop) == 2 * 3 - 1 and SEEN[1][1] == SEEN[2][1] < SEEN[0][1]
    if name == "flow_euler":
        assert SEEN[0][1] == math.inf


# -- `with pipe:` after a bare apg.guide ------------------------------------------------------------------
def test_bare_with_keeps_the_guidance_set_before():
    pipe = tiny_sd_pipeline("ddim")
    a, b = apg.APG(W), apg.CFG(W)
    with apg.guide(pipe, a):
        expected_a = call(pipe, "sd")
    with apg.guide(pipe, b):
        expected_b = call(pipe, "sd")
    stock = call(pipe, "sd", guidance_scale=W)

    apg.guide(pipe, a)
    with pipe:
        assert torch.equal(call(pipe, "sd"), expected_a)
    assert torch.equal(call(pipe, "sd"), expected_a)  # A is kept after the block, not stock behaviour
    with apg.guide(pipe, b):  # the direct form restores what was there before it: A
        assert torch.equal(call(pipe, "sd"), expected_b)
    assert torch.equal(call(pipe, "sd"), expected_a)
    with contextlib.ExitStack() as stack:  # and so does entering it through an ExitStack
        stack.enter_context(apg.guide(pipe, b))
        assert torch.equal(call(pipe, "sd"), expected_b)
    assert torch.equal(call(pipe, "sd"), expected_a)
    with pipe:
        apg.guide(pipe, None)
    assert torch.equal(call(pipe, "sd"), expected_a)  # a bare `with pipe:` restores its entry state
    apg.guide(pipe, None)  # stock again: the stock class, which is no context manager (apg.guide's handle is)
    assert torch.equal(call(pipe, "sd", guidance_scale=W), stock) and not any(k.startswith("_apg") for k in vars(pipe))
