"""Denoised-space guidance equals hand-written sampling loops; raw-output mode equals Diffusers' APG guider.

The reference loops convert the model output to x0 by hand, apply Algorithm 1 in float64 (written here,
independent of apg.guidance), and take the sampler's update from x0 by hand: DDIM (eta = 0), Euler and
FlowMatch Euler. Only the schedulers' timestep and noise tables are read from Diffusers.
"""

import math

import pytest
import torch
from tiny_pipelines import make_scheduler, rel_diff, tiny_sd3_pipeline, tiny_sd_pipeline

import apg

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 3
W, BETA = 6.0, -0.5  # eta = 0
# Norm threshold per case, between the largest and smallest x0-difference norms of these tiny models.
R = {("ddim", "epsilon"): 1.5, ("ddim", "v_prediction"): 0.6, ("euler", "epsilon"): 10.0,
     ("euler", "v_prediction"): 0.7, ("flow_euler", "flow"): 1.0}
PROMPT, NEGATIVE = "a photo of a cat", "a blue car"
RESCALED = []  # per sample and step: was the norm threshold active in the reference?


def apg_reference(x0_cond, x0_uncond, running, r, w=W, eta=0.0, beta=BETA):
    """Algorithm 1 on [B, ...] float64 tensors; returns (guided x0, new running average)."""
    diff = x0_cond - x0_uncond
    running = diff if running is None else diff + beta * running
    norms = [float(d.norm()) for d in running]
    RESCALED.extend(norm > r for norm in norms)
    diff = torch.stack([d * min(1.0, r / norm) for d, norm in zip(running, norms)])  # per-sample rescaling
    dims = tuple(range(1, diff.ndim))
    coef = (diff * x0_cond).sum(dims, keepdim=True) / (x0_cond * x0_cond).sum(dims, keepdim=True)
    parallel = coef * x0_cond
    orthogonal = diff - parallel
    return x0_cond + (w - 1.0) * (orthogonal + eta * parallel), running


def initial_latents(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def sd_reference(pipe, sampler, prediction):
    """SD sampling loop with guidance in x0 space, DDIM (eta=0) or Euler, written out by hand."""
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
    embeds = torch.cat([uncond, cond])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    x = initial_latents((1, 4, 16, 16)).double() * float(scheduler.init_noise_sigma)
    running = None
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
        x_vp = model_input  # alpha x0 + sigma eps in both cases
        if prediction == "epsilon":
            to_x0 = lambda o: (x_vp - sigma * o) / alpha  # noqa: E731
        else:
            to_x0 = lambda o: alpha * x_vp - sigma * o  # noqa: E731
        x0, running = apg_reference(to_x0(out_cond), to_x0(out_uncond), running, R[sampler, prediction])
        if sampler == "ddim":
            prev = int(t) - scheduler.config.num_train_timesteps // STEPS
            alpha_prev_sq = alphas_cumprod[prev] if prev >= 0 else alphas_cumprod[0]  # set_alpha_to_one=False
            eps = (x - alpha * x0) / sigma
            x = alpha_prev_sq.sqrt() * x0 + (1 - alpha_prev_sq).sqrt() * eps
        else:
            x = x + (s_next - s) * (x - x0) / s  # Euler on dx/ds = (x - x0) / s
    return x.float()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_x0_guidance_matches_reference_loop(sampler, prediction):
    pipe = tiny_sd_pipeline(sampler, prediction)
    run = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=32, width=32, num_inference_steps=STEPS,
               latents=initial_latents((1, 4, 16, 16)), output_type="latent")
    with apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=R[sampler, prediction], momentum=BETA)):
        guided = pipe(**run)[0]
    cfg = pipe(**run, guidance_scale=W)[0]
    RESCALED.clear()
    reference = sd_reference(pipe, sampler, prediction)
    assert any(RESCALED) and not all(RESCALED)  # both branches of the threshold are exercised
    assert rel_diff(guided, reference) <= 1e-4
    assert rel_diff(cfg, reference) > 1e-2  # APG is not CFG here: the comparison has teeth


@torch.no_grad()
def test_x0_guidance_matches_reference_loop_flow_match():
    pipe = tiny_sd3_pipeline("flow_euler")
    latents = initial_latents((1, 4, 16, 16))
    run = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=16, width=16, num_inference_steps=STEPS,
               latents=latents, output_type="latent", max_sequence_length=16)
    with apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=R["flow_euler", "flow"], momentum=BETA)):
        guided = pipe(**run)[0]
    cfg = pipe(**run, guidance_scale=W)[0]

    embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
        PROMPT, None, None, device="cpu", negative_prompt=NEGATIVE, max_sequence_length=16
    )
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS)
    RESCALED.clear()
    x, running = latents.double(), None
    for i, t in enumerate(scheduler.timesteps):
        s, s_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])  # x = (1 - s) x0 + s noise
        velocity = pipe.transformer(
            hidden_states=torch.cat([x, x]).float(), timestep=t.expand(2), return_dict=False,
            encoder_hidden_states=torch.cat([neg_embeds, embeds]), pooled_projections=torch.cat([neg_pooled, pooled]),
        )[0].double()
        v_uncond, v_cond = velocity.chunk(2)
        x0, running = apg_reference(x - s * v_cond, x - s * v_uncond, running, R["flow_euler", "flow"])
        x = x + (s_next - s) * (x - x0) / s
    assert any(RESCALED)
    assert rel_diff(guided, x.float()) <= 1e-4
    assert rel_diff(cfg, x.float()) > 1e-2


@pytest.mark.parametrize("scheduler_name", ["ddim", "euler"])
@torch.no_grad()
def test_raw_output_mode_matches_diffusers_guider(scheduler_name):
    from diffusers.guiders import AdaptiveProjectedGuidance
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

    eta, r = 0.3, 0.6  # r is below the first steps' raw eps difference norms, so rescaling is active
    pipe = tiny_sd_pipeline(scheduler_name)
    latents = initial_latents((1, 4, 16, 16))
    with apg.guide(pipe, apg.APG(W, eta=eta, norm_threshold=r, momentum=BETA), space="raw"):
        guided = pipe(PROMPT, negative_prompt=NEGATIVE, height=32, width=32, num_inference_steps=STEPS,
                      latents=latents, output_type="latent")[0]

    guider = AdaptiveProjectedGuidance(
        guidance_scale=W - 1, adaptive_projected_guidance_momentum=BETA, adaptive_projected_guidance_rescale=r,
        eta=eta, use_original_formulation=True,
    )
    guider.momentum_buffer = MomentumBuffer(BETA)  # what prepare_inputs does at step 0
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
    scheduler = make_scheduler(scheduler_name)
    scheduler.set_timesteps(STEPS)
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
        out = pipe.unet(model_input, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_uncond, out_cond = out.chunk(2)
        x = scheduler.step(guider.forward(out_cond, out_uncond).pred, t, x).prev_sample
    assert rel_diff(guided, x) <= 1e-4
    with apg.guide(pipe, apg.APG(W, eta=eta, norm_threshold=r, momentum=BETA)):  # x0 space differs
        x0_guided = pipe(PROMPT, negative_prompt=NEGATIVE, height=32, width=32, num_inference_steps=STEPS,
                         latents=latents, output_type="latent")[0]
    assert rel_diff(x0_guided, x) > 1e-2
