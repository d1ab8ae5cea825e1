"""x0 coefficients and noise levels of every supported scheduler, against the scheduler's own computation.

A sampling loop drives each scheduler with a fixed random "model" (a channel-mixing linear map of the scaled
input, modulated by the timestep). At every model evaluation, twice per step for Heun, KDPM2, DPM-Solver SDE and
FlowMatch Heun, the x0 from apg's (a, b) must equal the scheduler's own x0 within 1e-5: the
`pred_original_sample` its step returns, its `convert_model_output`, or the formula its source writes. The noise
level must equal sigma_t / alpha_t computed here from the scheduler's schedule (alphas_cumprod, the sigmas of
the step, s / (1 - s) for flow), including the interpolated sigma of each second evaluation. Then noise-injecting
and two-evaluation schedulers run under apg.guide on tiny pipelines: parity with stock CFG, and reproducibility
from the pipeline's generator.
"""

import inspect
import math

import pytest
import torch
from tiny_pipelines import FAMILIES, SD_BETAS, tiny_sd3_pipeline, tiny_sd_pipeline

import apg
import diffusers
from apg.schedulers import SUPPORTED_SCHEDULERS, check_scheduler, denoised_coefficients, noise_level

# Diffusers internals: the SDE solver's Brownian tree warns on float32 rounding of its interval ends, KDPM2 on numpy 2
pytestmark = pytest.mark.filterwarnings(
    "ignore:Should have ta>=t0", "ignore:Should have tb<=t1", "ignore:__array_wrap__ must accept context"
)
STEPS = 4
SHAPE = (2, 4, 6, 6)  # [B, C, H, W] latents
FLOW_SIGMAS = {"use_flow_sigmas": True, "flow_shift": 3.0}
ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
# Cosmos 2's hub config: Karras sigmas from 80 in the EDM frame (its pipeline feeds the model x / (1 + s))
COSMOS2 = {"use_karras_sigmas": True, "sigma_max": 80.0, "sigma_min": 0.002, "sigma_data": 1.0,
           "final_sigmas_type": "sigma_min"}
# id -> (scheduler class, config overrides, prediction types); together they cover SUPPORTED_SCHEDULERS
CASES = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}, None),
    "ddim_zero_snr": ("DDIMScheduler", {"clip_sample": False, **ZERO_SNR}, ("v_prediction",)),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}, None),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, None),
    "cogvideox_ddim": ("CogVideoXDDIMScheduler", {}, None),
    "cogvideox_ddim_2b": ("CogVideoXDDIMScheduler", ZERO_SNR, ("v_prediction",)),  # CogVideoX-2b's config
    "cogvideox_dpm": ("CogVideoXDPMScheduler", {}, None),
    "cogvideox_dpm_5b": ("CogVideoXDPMScheduler", ZERO_SNR, ("v_prediction",)),
    "euler": ("EulerDiscreteScheduler", {}, None),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, ("epsilon",)),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, None),
    "heun": ("HeunDiscreteScheduler", {}, None),
    "lms": ("LMSDiscreteScheduler", {}, None),
    "kdpm2": ("KDPM2DiscreteScheduler", {}, None),
    "kdpm2_a": ("KDPM2AncestralDiscreteScheduler", {}, None),
    "dpm_sde": ("DPMSolverSDEScheduler", {"noise_sampler_seed": 0}, None),
    "edm_euler": ("EDMEulerScheduler", {}, None),
    "edm_dpm": ("EDMDPMSolverMultistepScheduler", {}, None),
    "edm_dpm_sde": ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, ("epsilon",)),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, None),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, ("epsilon",)
    ),
    "dpmpp_single": ("DPMSolverSinglestepScheduler", {}, None),
    "dpmpp_3s_sde": (
        "DPMSolverSinglestepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}, ("epsilon",)
    ),
    "unipc": ("UniPCMultistepScheduler", {}, None),
    "deis": ("DEISMultistepScheduler", {}, None),
    "sasolver": ("SASolverScheduler", {}, None),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, None),
    "flow_euler_stochastic": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "stochastic_sampling": True}, None),
    "flow_euler_inverted": ("FlowMatchEulerDiscreteScheduler", {"invert_sigmas": True}, None),  # Mochi's
    "flow_euler_edm": ("FlowMatchEulerDiscreteScheduler", COSMOS2, None),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, None),
    "flow_lcm": ("FlowMatchLCMScheduler", {"shift": 3.0}, None),
}
ZERO_SNR_CASES = {"ddim_zero_snr", "cogvideox_ddim_2b", "cogvideox_dpm_5b"}
PARAMS = [
    pytest.param(name, prediction, id=f"{name}-{prediction}")
    for name, (cls_name, _, predictions) in CASES.items()
    for prediction in predictions or SUPPORTED_SCHEDULERS[cls_name]
]
TWO_STAGE = {"HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
             "DPMSolverSDEScheduler", "FlowMatchHeunDiscreteScheduler"}
# Their convert_model_output returns x0 (DPM-Solver++, UniPC with predict_x0, SA-Solver data prediction)
CONVERTS_TO_X0 = {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                  "EDMDPMSolverMultistepScheduler", "SASolverScheduler"}


def make(name, prediction):
    cls_name, overrides, _ = CASES[name]
    if cls_name == "DPMSolverSDEScheduler":
        pytest.importorskip("torchsde", reason="DPMSolverSDEScheduler needs the sde extra")
    cls = getattr(diffusers, cls_name)
    config = {**SD_BETAS, **overrides}
    if prediction != "flow":
        config["prediction_type"] = prediction
    if prediction == "flow_prediction":
        config.update(FLOW_SIGMAS)
    if cls_name == "DEISMultistepScheduler":
        config["thresholding"] = True  # only to read x0 where its source computes it: see own_x0
    accepted = inspect.signature(cls.__init__).parameters
    # overrides unfiltered: a hub config carries keys __init__ does not take (Cosmos 2's sigma_max)
    return cls.from_config({**{k: v for k, v in config.items() if k in accepted}, **overrides})


def model(x, t):
    """A fixed random linear map of the (scaled) input, modulated by the timestep; [B, C, ...] -> [B, C, ...]."""
    weight = torch.randn(SHAPE[1], SHAPE[1], generator=torch.Generator().manual_seed(7)) / 2
    return torch.einsum("ij,bj...->bi...", weight, x) * (1 + 0.3 * math.cos(float(t) / 97)) + 0.1


def base_sigmas(scheduler):
    """The schedule's own sigmas s_0 > s_1 > ... of the two-stage schedulers (they store them interleaved)."""
    return [float(s) for s in scheduler.sigmas[0::2]]


def expected_noise_level(scheduler, i, t):
    """EDM sigma of the i-th model evaluation, from the schedule (not from the scheduler's step index)."""
    name = type(scheduler).__name__
    if name in ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"):
        ac = float(scheduler.alphas_cumprod[int(t)])
        return math.inf if ac == 0 else math.sqrt((1 - ac) / ac)
    if name in TWO_STAGE:
        s, k = base_sigmas(scheduler), i // 2
        if i % 2 == 0:  # first evaluation of step k: at s_k
            sigma = s[k]
        elif name in ("HeunDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"):  # second: at the step's end
            sigma = s[k + 1]
        elif name == "KDPM2AncestralDiscreteScheduler":  # log-midpoint of s_k and the ancestral sigma_down
            up = math.sqrt(s[k + 1] ** 2 * (s[k] ** 2 - s[k + 1] ** 2) / s[k] ** 2)
            sigma = math.sqrt(s[k] * math.sqrt(s[k + 1] ** 2 - up**2))
        else:  # KDPM2, DPM-Solver SDE: log-midpoint of s_k and s_k+1
            sigma = math.sqrt(s[k] * s[k + 1])
    else:
        sigma = float(scheduler.sigmas[i])
    if scheduler.config.get("invert_sigmas"):  # x_t = s x0 + (1 - s) eps
        return math.inf if sigma == 0 else (1 - sigma) / sigma
    if name.startswith("FlowMatch") and scheduler.config.get("sigma_max", 1.0) > 1.0:  # x_t = x0 + s eps
        return sigma
    if name.startswith("FlowMatch") or scheduler.config.get("use_flow_sigmas"):  # x_t = (1 - s) x0 + s eps
        return math.inf if sigma == 1 else sigma / (1 - sigma)
    return sigma


def own_x0_formula(scheduler, i, t, sample, out):
    """x0 as the source of schedulers without an x0 output writes it, at the evaluation's schedule entry."""
    name = type(scheduler).__name__
    if name == "PNDMScheduler":  # _get_prev_sample: v -> eps, then the DDIM relation at the passed timestep
        ac = float(scheduler.alphas_cumprod[int(t)])
        eps = out if scheduler.config.prediction_type == "epsilon" else ac**0.5 * out + (1 - ac) ** 0.5 * sample
        return (sample - (1 - ac) ** 0.5 * eps) / ac**0.5
    if name == "FlowMatchHeunDiscreteScheduler":  # denoised = sample - model_output * sigma (sigma_next at stage 2)
        return sample - base_sigmas(scheduler)[(i + 1) // 2] * out
    # FlowMatch Euler / LCM: where a step, sample + (s' - s) v, to the schedule's end s' lands (1 inverted, else 0)
    end = 1.0 if scheduler.config.get("invert_sigmas") else 0.0
    return sample + (end - float(scheduler.sigmas[i])) * out


def sampling_loop(scheduler, steps=STEPS):
    """Yield (evaluation index, apg x0, scheduler x0, apg sigma, expected sigma) at every model evaluation."""
    family = check_scheduler(scheduler)
    name = type(scheduler).__name__
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=generator) * getattr(scheduler, "init_noise_sigma", 1.0)
    seen = []  # DEIS: the x0 its convert_model_output computes, caught where thresholding would apply
    scheduler._threshold_sample = lambda x0: seen.append(x0) or x0
    timesteps, old_x0 = scheduler.timesteps, None
    for i, t in enumerate(timesteps):
        scaled = scheduler.scale_model_input(sample, t) if hasattr(scheduler, "scale_model_input") else sample
        out = model(scaled, t)
        a, b = denoised_coefficients(scheduler, family, t)  # before step(), as apg calls it
        sigma = noise_level(scheduler, family, t)
        expected = expected_noise_level(scheduler, i, t)
        ours = a * sample.double() + b * out.double()
        if name in CONVERTS_TO_X0:
            theirs = scheduler.convert_model_output(out, sample=sample)
        if name == "CogVideoXDPMScheduler":  # step(output, old x0, t, t_back, sample): returns (prev, x0)
            t_back = timesteps[i - 1] if i > 0 else None
            sample, old_x0 = scheduler.step(out, old_x0, t, t_back, sample, generator=generator, return_dict=False)
            theirs = old_x0
        else:
            extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
            result = scheduler.step(out, t, sample, **extra)
            if getattr(result, "pred_original_sample", None) is not None:
                theirs = result.pred_original_sample
            elif name == "DEISMultistepScheduler":
                theirs = seen.pop()
            elif name not in CONVERTS_TO_X0:
                theirs = own_x0_formula(scheduler, i, t, sample, out)
            sample = result.prev_sample
        yield i, ours, theirs, sigma, expected


@pytest.mark.parametrize("name, prediction", PARAMS)
def test_x0_and_noise_level_equal_the_schedulers_own_at_every_evaluation(name, prediction):
    scheduler = make(name, prediction)
    evaluations = list(sampling_loop(scheduler))
    cls_name = type(scheduler).__name__
    # two-stage: 2 per step but one on the last; PLMS (PNDM) evaluates its first step twice
    assert len(evaluations) == {**dict.fromkeys(TWO_STAGE, 2 * STEPS - 1), "PNDMScheduler": STEPS + 1}.get(
        cls_name, STEPS)
    for i, ours, theirs, sigma, expected in evaluations:
        torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5, msg=f"x0 at evaluation {i}")
        # 1e-4: the schedulers derive interpolated sigmas in float32 (KDPM2 ancestral: a difference of squares)
        assert sigma == pytest.approx(expected, rel=1e-4), f"noise level at evaluation {i}"
    # +inf exactly where the schedule starts at pure noise: FlowMatch s = 1, alphas_cumprod = 0 at zero SNR
    assert (evaluations[0][3] == math.inf) == (name.startswith("flow_") and name != "flow_euler_edm"
                                               or name in ZERO_SNR_CASES)


def test_every_supported_scheduler_and_prediction_type_is_tested():
    tested = {(CASES[name][0], prediction) for name, prediction in (p.values for p in PARAMS)}
    supported = {(cls_name, p) for cls_name, predictions in SUPPORTED_SCHEDULERS.items() for p in predictions}
    assert tested == supported


def test_clipping_acts_on_the_x0_apg_computes():
    """clip_sample post-processes x0 inside step(): the scheduler's x0 is apg's, clamped."""
    scheduler = diffusers.DDPMScheduler(**SD_BETAS, clip_sample=True, clip_sample_range=0.5)
    clipped = 0
    for _, ours, theirs, _, _ in sampling_loop(scheduler):
        torch.testing.assert_close(ours.clamp(-0.5, 0.5), theirs.double(), rtol=1e-5, atol=1e-5)
        clipped += int((ours.abs() > 0.5).any())
    assert clipped > 0


@pytest.mark.parametrize("cls_name, config, match", [
    ("DPMSolverMultistepScheduler", {"prediction_type": "flow_prediction"}, "flow_prediction needs use_flow_sigmas"),
    ("UniPCMultistepScheduler", {"prediction_type": "v_prediction", **FLOW_SIGMAS}, "v_prediction needs"),
    ("KDPM2DiscreteScheduler", {"prediction_type": "sample"}, "'sample' of KDPM2DiscreteScheduler is not supported"),
    ("EDMEulerScheduler", {"prediction_type": "sample"}, "'sample' of EDMEulerScheduler is not supported"),
    ("IPNDMScheduler", {}, "scheduler IPNDMScheduler is not supported by apg"),
    ("FlowMatchEulerDiscreteScheduler", {"invert_sigmas": True, "stochastic_sampling": True},
     "invert_sigmas=True is not supported here"),
    ("FlowMatchLCMScheduler", {"invert_sigmas": True}, "invert_sigmas=True is not supported here"),
])
def test_unsupported_configurations_are_refused(cls_name, config, match):
    with pytest.raises(ValueError, match=match):
        check_scheduler(getattr(diffusers, cls_name)(**config))


def test_subclass_and_epsilon_at_zero_snr_are_refused():
    class Tweaked(diffusers.DDIMScheduler):
        pass

    with pytest.raises(ValueError, match="scheduler Tweaked is not supported"):
        check_scheduler(Tweaked())
    scheduler = diffusers.DDIMScheduler(**SD_BETAS, **ZERO_SNR)
    scheduler.set_timesteps(STEPS)
    with pytest.raises(ValueError, match="no x0 at timestep 999: alpha_t = 0"):
        denoised_coefficients(scheduler, check_scheduler(scheduler), scheduler.timesteps[0])
    assert noise_level(scheduler, "alphas_cumprod", scheduler.timesteps[0]) == math.inf


# -- under apg.guide: parity, one guidance per evaluation, reproducibility from the generator ---------------
SCALE = 4.0
PARITY = dict(eta=1.0, norm_threshold=0.0, momentum=0.0)
CALLS = []  # guidance calls; a module-level list survives the per-call deep copy


class Counting(apg.APG):
    def __call__(self, pred_cond, pred_uncond, **kwargs):
        CALLS.append(1)
        return super().__call__(pred_cond, pred_uncond, **kwargs)


def run(pipe, family, seed, **kwargs):
    """One pipeline call seeded by its generator; SD3 (like the other flow pipelines) does not pass its generator
    to scheduler.step, so there the step's noise comes from torch's global RNG, seeded here too."""
    if family == "sd3":
        torch.manual_seed(seed)
    out = pipe(**{"output_type": "latent", **FAMILIES[family][2], **kwargs}, num_inference_steps=3,
               generator=torch.Generator().manual_seed(seed))
    return out[0]


_pipes = {}


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("family, name", [
    ("sd", "ddpm"), ("sd", "euler_a"), ("sd", "kdpm2_a"), ("sd", "dpm_sde"), ("sd", "dpmpp_3s_sde"),
    ("sd", "sasolver"), ("sd", "kdpm2"), ("sd", "edm_dpm_sde"),
    ("sd3", "flow_heun"), ("sd3", "flow_lcm"), ("sd3", "flow_euler_stochastic"),
])
def test_guided_noise_injecting_and_two_stage_schedulers_match_stock_and_reproduce(family, name):
    if family not in _pipes:
        _pipes[family] = tiny_sd_pipeline() if family == "sd" else tiny_sd3_pipeline()
    pipe = _pipes[family]
    cls_name = CASES[name][0]
    prediction = "flow" if family == "sd3" else "epsilon"
    pipe.scheduler = getattr(diffusers, cls_name).from_config(make(name, prediction).config)
    stock = run(pipe, family, seed=0, guidance_scale=SCALE)
    CALLS.clear()
    with apg.guide(pipe, Counting(SCALE, **PARITY)):
        guided = run(pipe, family, seed=0)
        assert len(CALLS) == (5 if cls_name in TWO_STAGE else 3)  # once per model evaluation
        again = run(pipe, family, seed=0)
        other = run(pipe, family, seed=1)
    torch.testing.assert_close(guided, stock, rtol=1e-4, atol=1e-4)
    assert torch.equal(guided, again)
    assert not torch.allclose(guided, other)
    with apg.guide(pipe, apg.APG(SCALE, momentum=-0.5)):  # momentum state across both evaluations: still exact
        assert torch.equal(run(pipe, family, seed=0), run(pipe, family, seed=0))
