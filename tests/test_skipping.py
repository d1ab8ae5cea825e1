"""Skipping the model evaluations the rule does not use (apg/_skip.py), in detail on the classes guided before issue 17
(tests/test_every_pipeline.py checks every class of the tiny registry more briefly).

Per class (tiny components): the rows the denoiser evaluates are counted at each call, and the result is compared
with the same rule run with both passes (apg.set_skipping(False)): outside a sigma interval the uncond pass does
not run (a separate call is not made; a one-pass batch runs its cond half), at CFG-Zero*'s zeroed step no model
runs at all. Per supported scheduler: the sigma the skip decision is made at, before the model runs, equals the
sigma the rule is later called with at that evaluation.
"""

import functools

import pytest
import tiny_control
import tiny_image
import tiny_pipelines
import tiny_video
import torch
from tiny_pipelines import count_rows, rel_diff

import apg
from apg.registry import spec_for
from apg.schedulers import SUPPORTED_SCHEDULERS

pytestmark = pytest.mark.usefixtures("single_thread")

W, BETA = 5.0, -0.5


def _runner(module, families, call):
    return lambda family: (families[family][0], lambda pipe, **kw: call(pipe, family, **kw))


_BASIC = _runner(tiny_pipelines, tiny_pipelines.FAMILIES, tiny_pipelines.call)
_IMAGE = _runner(tiny_image, tiny_image.IMAGE_FAMILIES, tiny_image.call_image)
_CONTROL = _runner(tiny_control, tiny_control.FAMILIES, tiny_control.call)
_VIDEO = _runner(tiny_video, tiny_video.VIDEO_FAMILIES, tiny_video.video_call)
# registered class -> family of the tiny builders; a few classes twice (Wan 2.2's two experts, 4-channel inpainting)
CASES = {
    "StableDiffusionPipeline": _BASIC("sd"), "StableDiffusionImg2ImgPipeline": _BASIC("sd_img2img"),
    "StableDiffusionXLPipeline": _BASIC("sdxl"), "StableDiffusionXLImg2ImgPipeline": _BASIC("sdxl_img2img"),
    "StableDiffusion3Pipeline": _BASIC("sd3"), "PixArtSigmaPipeline": _BASIC("pixart_sigma"),
    "SanaPipeline": _BASIC("sana"), "DiTPipeline": _BASIC("dit"), "FluxPipeline": _BASIC("flux"),
    "QwenImagePipeline": _IMAGE("qwen"), "QwenImageEditPipeline": _IMAGE("qwen_edit"),
    "ChromaPipeline": _IMAGE("chroma"), "FluxKontextPipeline": _IMAGE("flux_kontext"),
    "FluxImg2ImgPipeline": _IMAGE("flux_img2img"), "HiDreamImagePipeline": _IMAGE("hidream"),
    "Lumina2Pipeline": _IMAGE("lumina2"),
    "StableDiffusionControlNetPipeline": _CONTROL("sd_controlnet"),
    "StableDiffusionXLControlNetPipeline": _CONTROL("sdxl_controlnet"),
    "StableDiffusionInpaintPipeline": _CONTROL("sd_inpaint"), "StableDiffusionInpaintPipeline/4ch": _CONTROL(
        "sd_inpaint_4ch"),
    "StableDiffusionXLInpaintPipeline": _CONTROL("sdxl_inpaint"), "PixArtAlphaPipeline": _CONTROL("pixart_alpha"),
    "StableDiffusion3Img2ImgPipeline": _CONTROL("sd3_img2img"), "KolorsPipeline": _CONTROL("kolors"),
    "AuraFlowPipeline": _CONTROL("auraflow"), "CogView4Pipeline": _CONTROL("cogview4"),
    "HunyuanDiTPipeline": _CONTROL("hunyuandit"), "Kandinsky5T2VPipeline": _CONTROL("kandinsky5_t2v"),
    "ZImagePipeline": _CONTROL("z_image"),
    "WanPipeline": _VIDEO("wan"), "WanPipeline/2.2": _VIDEO("wan22"), "WanImageToVideoPipeline": _VIDEO("wan_i2v"),
    "LTXPipeline": _VIDEO("ltx"), "LTXImageToVideoPipeline": _VIDEO("ltx_i2v"),
    "CogVideoXPipeline": _VIDEO("cogvideox"), "HunyuanVideoPipeline": _VIDEO("hunyuan_video"),
}


SEEN = {"decided": [], "guided": []}  # (step, sigma); module level: apg.guide runs a deep copy of the guidance


def _spying(cls):
    class Spy(cls):
        def needs_uncond(self, sigma, step, **kwargs):
            SEEN["decided"].append((step, sigma))
            return super().needs_uncond(sigma, step, **kwargs)

        def __call__(self, pred_cond, pred_uncond, *, sigma=None, step=None):
            SEEN["guided"].append((step, sigma))
            return super().__call__(pred_cond, pred_uncond, sigma=sigma, step=step)

        def cond_only(self, pred_cond, *, sigma=None, step=None):
            SEEN["guided"].append((step, sigma))
            return super().cond_only(pred_cond, sigma=sigma, step=step)

    return Spy


SpyAPG, SpyZeroStar = _spying(apg.APG), _spying(apg.CFGZeroStar)


def _run(pipe, run, guidance, skip, rows):
    """(result, rows per evaluation, (step, sigma) per guided step) of one call; `rows` from count_rows."""
    rows.clear(), SEEN["decided"].clear(), SEEN["guided"].clear()
    with apg.set_skipping(skip):
        out = run(pipe, guidance=guidance)
    return out, list(rows), list(SEEN["guided"])


def _interval(sigmas):
    """(low, high]: the first and the last step outside, the ones between inside."""
    ordered = sorted(set(sigmas), reverse=True)
    return ordered[-1], ordered[1]


@pytest.mark.parametrize("case", CASES)
def test_skips_and_matches_both_passes(case):
    build, call = CASES[case]
    pipe = build()
    separate = spec_for(pipe).batch == "separate"
    tolerance = 1e-5 if separate else 1e-4
    run = lambda pipe, guidance: call(pipe, steps=4, guidance=guidance)  # noqa: E731
    counted = count_rows(pipe)
    with apg.guide(pipe, apg.CFG(W)):  # the mixin's `guidance=` per call needs the guided class
        _, full_rows, seen = _run(pipe, run, SpyAPG(W, momentum=BETA), False, counted)
        sigmas = [sigma for _, sigma in seen]
        interval = _interval(sigmas)
        inside = [interval[0] < s <= interval[1] for s in sigmas]
        assert any(inside) and not all(inside)
        guidance = SpyAPG(W, momentum=BETA, interval=interval)
        both, both_rows, _ = _run(pipe, run, guidance, False, counted)
        skipped, rows, _ = _run(pipe, run, guidance, True, counted)
        assert both_rows == full_rows
        per_step = len(full_rows) // len(sigmas)  # 2 separate calls, or 1 batched one
        expected = []
        for i, guided in enumerate(inside):
            step_rows = full_rows[i * per_step:(i + 1) * per_step]
            expected += step_rows if guided else [step_rows[0] // (1 if separate else 2)]
        assert rows == expected
        assert rel_diff(skipped, both) <= tolerance
        assert rel_diff(both, call(pipe, steps=4, guidance=apg.APG(W, momentum=BETA))) > 1e-3  # the interval mattered

        zero_star = SpyZeroStar(W, zero_init_steps=1)
        both, both_rows, _ = _run(pipe, run, zero_star, False, counted)
        skipped, rows, _ = _run(pipe, run, zero_star, True, counted)
        assert rows == both_rows[per_step:]  # no model at the zeroed step
        assert rel_diff(skipped, both) <= tolerance


@pytest.mark.parametrize("case", ["StableDiffusionXLPipeline", "FluxPipeline", "DiTPipeline"])
def test_scale_one_runs_no_uncond_pass(case):
    build, call = CASES[case]
    pipe = build()
    separate = spec_for(pipe).batch == "separate"
    run = lambda pipe, guidance: call(pipe, steps=3, guidance=guidance)  # noqa: E731
    counted = count_rows(pipe)
    with apg.guide(pipe, apg.CFG(W)):
        n = 2 if case == "DiTPipeline" else 1  # DiT's two class labels
        for guidance in (apg.APG(1.0, momentum=BETA), apg.CFG(torch.ones(n, dtype=torch.float64))):
            both, both_rows, _ = _run(pipe, run, guidance, False, counted)
            skipped, rows, _ = _run(pipe, run, guidance, True, counted)
            assert rows == [n] * 3 and both_rows == ([n] * 6 if separate else [2 * n] * 3)
            assert rel_diff(skipped, both) <= 1e-5


# -- the sigma decided before the model runs is the sigma the rule gets ------------------------------------
SCHEDULER_CASES = {  # id -> (family, scheduler class, config, call extras)
    "ddim": ("sd", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}, {}),
    "ddpm": ("sd", "DDPMScheduler", {"clip_sample": False}, {}),
    "pndm": ("sd", "PNDMScheduler", {"skip_prk_steps": True}, {}),
    "euler": ("sd", "EulerDiscreteScheduler", {}, {}),
    "euler_a": ("sd", "EulerAncestralDiscreteScheduler", {}, {}),
    "heun": ("sd", "HeunDiscreteScheduler", {}, {}),
    "lms": ("sd", "LMSDiscreteScheduler", {}, {}),
    "kdpm2": ("sd", "KDPM2DiscreteScheduler", {}, {}),
    "kdpm2_a": ("sd", "KDPM2AncestralDiscreteScheduler", {}, {}),
    "dpm_sde": ("sd", "DPMSolverSDEScheduler", {"noise_sampler_seed": 0}, {}),
    "edm_euler": ("sd", "EDMEulerScheduler", {}, {}),
    "edm_dpm": ("sd", "EDMDPMSolverMultistepScheduler", {}, {}),
    "dpmpp_2m": ("sd", "DPMSolverMultistepScheduler", {}, {}),
    "dpmpp_single": ("sd", "DPMSolverSinglestepScheduler", {}, {}),
    "unipc": ("sd", "UniPCMultistepScheduler", {}, {}),
    "deis": ("sd", "DEISMultistepScheduler", {}, {}),
    "sa_solver": ("sd", "SASolverScheduler", {}, {}),
    "cogvideox_ddim": ("cogvideox", "CogVideoXDDIMScheduler", {}, {}),
    "cogvideox_dpm": ("cogvideox", "CogVideoXDPMScheduler", {}, {}),
    "flow_euler": ("sd3", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {}),
    "flow_heun": ("sd3", "FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, {}),
    "flow_lcm": ("sd3", "FlowMatchLCMScheduler", {"shift": 3.0}, {}),
    # img2img: the loop starts at the scheduler's begin index (an index-based scheduler), or mid-table (DDIM)
    "euler_img2img": ("sd_img2img", "EulerDiscreteScheduler", {}, {}),
    "dpmpp_2m_img2img": ("sd_img2img", "DPMSolverMultistepScheduler", {}, {}),
    "ddim_img2img": ("sd_img2img", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}, {}),
    "flow_euler_img2img": ("sd3_img2img", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {}),
    # custom schedules
    "euler_timesteps": ("sd", "EulerDiscreteScheduler", {}, {"timesteps": [999, 700, 400, 100]}),
    "euler_sigmas": ("sd", "EulerDiscreteScheduler", {}, {"sigmas": [14.0, 4.0, 1.0, 0.2]}),
    "flow_euler_sigmas": ("sd3", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {"sigmas": [1.0, 0.7, 0.4, 0.1]}),
}
_SCHEDULER_FAMILY = {"sd": _BASIC, "sd_img2img": _BASIC, "sd3": _BASIC, "sd3_img2img": _CONTROL, "cogvideox": _VIDEO}


def test_every_supported_scheduler_is_checked():
    assert {case[1] for case in SCHEDULER_CASES.values()} == set(SUPPORTED_SCHEDULERS)


@pytest.mark.parametrize("case", SCHEDULER_CASES)
@pytest.mark.filterwarnings("ignore:Should have ta>=t0", "ignore:Should have tb<=t1")
def test_decided_sigma_is_the_guided_sigma(case):
    family, cls_name, config, extras = SCHEDULER_CASES[case]
    build, call = _SCHEDULER_FAMILY[family](family)
    pipe = build()
    import diffusers

    scheduler_cls = getattr(diffusers, cls_name)
    pipe.scheduler = scheduler_cls.from_config({**pipe.scheduler.config, **config})
    steps = {} if extras else {"steps": 4}
    with apg.guide(pipe, SpyAPG(W, momentum=BETA)):
        SEEN["decided"].clear(), SEEN["guided"].clear()
        call(pipe, **steps, **extras)
    decided, guided = list(SEEN["decided"]), list(SEEN["guided"])
    assert len(guided) >= 3 and decided == guided
    sigmas = [sigma for _, sigma in guided]
    assert all(s > 0 for s in sigmas) and len(set(sigmas)) > 1


def test_which_passes_a_rule_needs():
    """Guidance.needs_cond / needs_uncond against the rule's own output: where a pass is not needed, changing its
    prediction does not change the output."""
    cond, uncond, other = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    cases = [
        (apg.APG(W, momentum=BETA, interval=(0.5, 2.0)), 3.0, 0, False),  # outside
        (apg.APG(W, momentum=BETA, interval=(0.5, 2.0)), 1.0, 0, True),  # inside
        (apg.APG(1.0, momentum=BETA), 1.0, 0, False),
        (apg.CFG(torch.tensor([1.0, 1.0], dtype=torch.float64)), 1.0, 0, False),
        (apg.CFG(torch.tensor([1.0, 2.0], dtype=torch.float64)), 1.0, 0, True),
        (apg.CFGZeroStar(W, zero_init_steps=1), 1.0, 1, True),
    ]
    for guidance, sigma, step, needed in cases:
        assert guidance.needs_uncond(sigma, step) is needed and guidance.needs_cond(sigma, step)
        if not needed:
            context = dict(sigma=sigma, step=step)
            assert torch.equal(guidance(cond, uncond, **context), guidance(cond, other, **context))
            assert torch.equal(guidance.cond_only(cond, **context), guidance(cond, uncond, **context))
    zeroed = apg.CFGZeroStar(W, zero_init_steps=2)
    assert not zeroed.needs_cond(1.0, 1) and not zeroed.needs_uncond(1.0, 1) and zeroed.needs_cond(1.0, 2)
    assert not zeroed.cond_only(cond, step=1).any()
    # At w = 1 APG's momentum still moves: a run whose scale changes later keeps the pass, a momentum-free rule not
    assert apg.APG(1.0, momentum=BETA).needs_uncond(1.0, 0, scale_fixed=False)
    assert not apg.APG(1.0, momentum=0.0).needs_uncond(1.0, 0, scale_fixed=False)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        apg.set_skipping("no")


@pytest.mark.parametrize("guess_mode", [False, True])
def test_controlnet_runs_on_the_cond_half_too(guess_mode):
    """From the second step on (once the unet has shown the batch), the ControlNet is cut with the unet; in guess
    mode it gets the cond half from the pipeline already and passes as it is."""
    build, call = CASES["StableDiffusionControlNetPipeline"]
    pipe = build()
    rows = []
    inner = pipe.controlnet.forward

    @functools.wraps(inner)
    def counting(*args, **kwargs):
        rows.append((args[0] if args else kwargs["sample"]).shape[0])
        return inner(*args, **kwargs)

    pipe.controlnet.forward = counting
    unet_rows = count_rows(pipe)
    with apg.guide(pipe, apg.CFG(W)):
        run = lambda pipe, guidance: call(pipe, steps=4, guidance=guidance, guess_mode=guess_mode)  # noqa: E731
        _, _, seen = _run(pipe, run, SpyAPG(W, momentum=BETA), False, unet_rows)
        guidance = SpyAPG(W, momentum=BETA, interval=_interval([sigma for _, sigma in seen]))
        rows.clear()
        both, _, _ = _run(pipe, run, guidance, False, unet_rows)
        assert rows == [1 if guess_mode else 2] * 4
        rows.clear()
        skipped, evaluated, _ = _run(pipe, run, guidance, True, unet_rows)
    assert evaluated == [1, 2, 2, 1]  # steps 0 and 3 outside the interval
    assert rows == ([1] * 4 if guess_mode else [2, 2, 2, 1])  # step 0: the unet has not shown the batch yet
    assert rel_diff(skipped, both) <= 1e-4
