"""ControlNet, inpainting, PixArt-Alpha, SD3 img2img, Kolors, AuraFlow, HunyuanDiT, CogView4, Kandinsky 5, ZImage.

Per pipeline: APG(eta=1, r=0, beta=0) equals the stock CFG call (<= 1e-4), with the guidance seen once per
scheduler step on x0 shaped like the latents; a nonlinear APG differs from CFG; after apg.guide(pipe, None)
the pipeline is stock again. For inpainting and the two-pass pipelines, the x0 apg guides is the
scheduler's own x0 of the conditional output, at every step.
"""

import copy
import functools

import pytest
import torch
from tiny_control import (
    FAMILIES,
    call,
    tiny_sd_inpaint_pipeline,
    tiny_sdxl_inpaint_pipeline,
)
from tiny_pipelines import rel_diff

import apg

pytestmark = pytest.mark.usefixtures("single_thread")

SCALE, STEPS = 4.0, 3
RECORDED = []  # (x0_cond, x0_uncond) per guidance call; module level: the guidance is deep-copied per call


class Recording(apg.APG):
    def __call__(self, pred_cond, pred_uncond, **context):
        RECORDED.append((pred_cond.clone(), pred_uncond.clone()))
        return super().__call__(pred_cond, pred_uncond, **context)


def evaluations(pipe, family, **kwargs):
    """Run the call; the number of denoiser evaluations, counted by a hook of the test's own."""
    count, controlnet_count = [], []
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    handles = [denoiser.register_forward_hook(lambda *_: count.append(1))]
    if getattr(pipe, "controlnet", None) is not None:  # it runs too, but only the unet's output is captured
        handles.append(pipe.controlnet.register_forward_hook(lambda *_: controlnet_count.append(1)))
    try:
        result = call(pipe, family, STEPS, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    assert len(controlnet_count) == (len(count) if handles[1:] else 0)
    return result, len(count)


PASSES = {"cogview4": 2, "kandinsky5_t2v": 2}  # cond and uncond passes per step; the others batch both halves
STOCK_SCALE = {"z_image": SCALE - 1}  # ZImage's rule pos + s (pos - neg) is CFG at w = s + 1


# Extra call arguments that change how the pipeline runs its CFG, each checked for parity too.
VARIANTS = {
    "sd_controlnet": {"guess_mode": True},  # the controlnet sees the cond half only; uncond gets zero residuals
    "sdxl_controlnet": {"guess_mode": True, "controlnet_conditioning_scale": 0.5},
    "sdxl_inpaint": {"guidance_rescale": 0.7},
    "hunyuandit": {"guidance_rescale": 0.7},
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parity_nonlinear_and_stock_again(family):
    pipe = FAMILIES[family][0]()
    stock = {}
    for variant, extra in {"base": {}, "variant": VARIANTS.get(family)}.items():
        if extra is None:
            continue
        stock[variant] = call(pipe, family, STEPS, guidance_scale=STOCK_SCALE.get(family, SCALE), **extra)
        RECORDED.clear()
        with apg.guide(pipe, Recording(SCALE, eta=1.0, norm_threshold=0.0, momentum=0.0)):
            guided, evaluated = evaluations(pipe, family, **extra)
        assert rel_diff(guided, stock[variant]) <= 1e-4, extra
        assert len(RECORDED) == evaluated // PASSES.get(family, 1) > 0  # once per scheduler step
        assert all(x0.shape == guided.shape for pair in RECORDED for x0 in pair)
    apg.guide(pipe, apg.APG(SCALE, eta=0.0, norm_threshold=0.5, momentum=-0.5))
    assert rel_diff(call(pipe, family, STEPS), stock["base"]) > 1e-3  # the hook ran: APG is not CFG here
    apg.guide(pipe, None)
    assert torch.equal(call(pipe, family, STEPS, guidance_scale=STOCK_SCALE.get(family, SCALE)), stock["base"])


def _flow_match_x0(scheduler, timestep, sample, velocity):
    """FlowMatch Euler's own x0, from its step: sample = (1 - sigma) x0 + sigma noise, velocity = noise - x0."""
    index = scheduler.index_for_timestep(timestep) if scheduler.step_index is None else scheduler.step_index
    return sample - scheduler.sigmas[index] * velocity


def _conditional(outputs, batch):
    """The cond half of the denoiser outputs before a step, as the scheduler gets them."""
    if batch == "separate":
        return outputs[-2]  # cond pass, then uncond pass
    if batch == "z_image":  # a list: cond samples first; stepped negated, without the frame dim
        return -torch.stack(outputs[-1][: len(outputs[-1]) // 2]).squeeze(2)
    return outputs[-1].chunk(2)[1]  # [uncond, cond]


def _record_scheduler_x0(monkeypatch, pipe, batch):
    """Patch the scheduler class's step: before each real step, record the x0 the scheduler itself computes
    from the denoiser's conditional output: its pred_original_sample (on a copy of its state) where step
    returns one, else FlowMatch Euler's formula. Returns that list."""
    outputs, own_x0 = [], []
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    denoiser.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out.sample))
    cls = type(pipe.scheduler)
    original = cls.step

    @functools.wraps(original)
    def step(self, model_output, timestep, sample, *args, **kwargs):
        cond = _conditional(outputs, batch)
        if hasattr(self, "alphas_cumprod"):
            kwargs_copy = {k: v for k, v in kwargs.items() if k not in ("generator", "return_dict")}
            own = original(copy.deepcopy(self), cond, timestep, sample, *args, **kwargs_copy).pred_original_sample
        else:
            own = _flow_match_x0(self, timestep, sample, cond)
        own_x0.append(own.clone())
        return original(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(cls, "step", step)
    return own_x0


def check_x0(monkeypatch, pipe, family, batch="uncond_first"):
    own_x0 = _record_scheduler_x0(monkeypatch, pipe, batch)
    RECORDED.clear()
    with apg.guide(pipe, Recording(SCALE, eta=0.0, norm_threshold=0.5, momentum=-0.5)):
        call(pipe, family, STEPS)
    assert len(RECORDED) == len(own_x0) > 1
    for (x0_cond, _), own in zip(RECORDED, own_x0):
        assert rel_diff(x0_cond, own) <= 1e-5


@pytest.mark.parametrize("family, builder, scheduler, prediction", [
    ("sd_inpaint", tiny_sd_inpaint_pipeline, "ddim", "epsilon"),
    ("sd_inpaint", tiny_sd_inpaint_pipeline, "euler", "v_prediction"),
    ("sd_inpaint_4ch", lambda s, p: tiny_sd_inpaint_pipeline(s, p, unet_channels=4), "euler", "epsilon"),
    ("sdxl_inpaint", tiny_sdxl_inpaint_pipeline, "ddim", "v_prediction"),
])
def test_inpaint_x0_is_the_schedulers_own(monkeypatch, family, builder, scheduler, prediction):
    check_x0(monkeypatch, builder(scheduler, prediction), family)


@pytest.mark.parametrize("family, batch", [
    ("cogview4", "separate"), ("kandinsky5_t2v", "separate"), ("z_image", "z_image"),
])
def test_flow_x0_is_the_schedulers_own(monkeypatch, family, batch):
    """FlowMatch Euler: two passes per step; Kandinsky 5's channels-last video; ZImage's negated list outputs."""
    check_x0(monkeypatch, FAMILIES[family][0](), family, batch)


@pytest.mark.parametrize("arg, value", [("cfg_normalization", True), ("cfg_truncation", 0.5)])
def test_z_image_post_processing_refused(arg, value):
    pipe = FAMILIES["z_image"][0]()
    apg.guide(pipe, apg.APG(SCALE))
    with pytest.raises(ValueError, match=f"{arg}={value!r} is not supported by apg with ZImagePipeline"):
        call(pipe, "z_image", STEPS, **{arg: value})


@pytest.mark.parametrize("name", [
    "HunyuanImagePipeline", "HunyuanVideo15Pipeline",
])
def test_unsupported_pipelines_refused(name):
    import diffusers

    pipe = object.__new__(getattr(diffusers, name))  # the class is all apg looks at before refusing
    with pytest.raises(ValueError, match=f"pipeline {name} is not supported"):
        apg.guide(pipe, apg.APG(SCALE))


def test_register_pipeline_docstring_example():
    """The pattern register_pipeline's docstring shows: ControlNet img2img, declared by the user."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline
    from tiny_control import IMAGE, tiny_sd_controlnet_pipeline

    class MyControlNetImg2Img(StableDiffusionControlNetImg2ImgPipeline):
        def __call__(self, *args, **kwargs):  # a user's own __call__ (here: the stock one)
            return super().__call__(*args, **kwargs)

    pipe = MyControlNetImg2Img(**tiny_sd_controlnet_pipeline().components)
    pipe.set_progress_bar_config(disable=True)
    run = dict(prompt="a photo of a cat", negative_prompt="a blue car", image=IMAGE, control_image=IMAGE,
               strength=0.75, num_inference_steps=4, output_type="latent")
    stock = pipe(**run, guidance_scale=SCALE, generator=torch.Generator().manual_seed(0))[0]
    for registered in (False, True):  # the base's entry, inherited; then the class's own, as the docstring has it
        if registered:
            apg.register_pipeline(MyControlNetImg2Img, denoiser="unet", batch="uncond_first",
                                  quirks=(apg.quirks.Conditioners("controlnet"),))
        with apg.guide(pipe, apg.APG(SCALE, eta=1.0, momentum=0.0)):
            guided = pipe(**run, generator=torch.Generator().manual_seed(0))[0]
        assert rel_diff(guided, stock) <= 1e-4
