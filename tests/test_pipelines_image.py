"""Image pipelines with their own CFG post-processing: Qwen-Image (+ Edit), Chroma, Flux Kontext and img2img,
HiDream, Lumina2.

Parity: APG(eta=1, r=0, beta=0) through apg.guide equals the stock pipeline's CFG, post-processing included
(Qwen's and Lumina2's rescale to the cond prediction's norm, Lumina2's truncation, the negated outputs).
Hand-written loops (transformer called here, x0 by the flow formula, APG in float64, the pipeline's own
post-processing, scheduler.step) check the x0-space guidance of Qwen, Lumina2, Chroma and Flux Kontext;
HiDream's x0 is checked against its scheduler's own conversion of the negated output.
"""

import numpy as np
import pytest
import torch
from tiny_image import IMAGE_FAMILIES, TEXT_LEN, call_image
from tiny_pipelines import make_scheduler, rel_diff

import apg

pytestmark = pytest.mark.usefixtures("single_thread")

SCALE, STEPS = 4.0, 3
W, BETA = 5.0, -0.5  # the nonlinear runs: eta = 0
RECORDED = []  # x0 of the cond prediction per guided step; a module-level list survives the per-call deepcopy


class Recording(apg.APG):
    def __call__(self, pred_cond, pred_uncond, **context):
        RECORDED.append(pred_cond.detach().clone())
        return super().__call__(pred_cond, pred_uncond, **context)


_cache = {}


def pipeline(family):
    if family not in _cache:
        _cache[family] = IMAGE_FAMILIES[family][0]()
    return _cache[family]


# -- parity, nonlinear APG, stock back ----------------------------------------------------------------------
# cfg_trunc_ratio 0.7 of 3 steps: the last one unguided; 0.0: none guided
LUMINA2_OPTIONS = [{}, {"cfg_normalization": False}, {"cfg_trunc_ratio": 0.7}, {"cfg_trunc_ratio": 0.0}]


@pytest.mark.parametrize(
    "family, options",
    [(family, {}) for family in IMAGE_FAMILIES if family != "lumina2"] + [("lumina2", o) for o in LUMINA2_OPTIONS],
)
def test_parity_nonlinear_and_stock_back(family, options):
    pipe, scale_arg = pipeline(family), IMAGE_FAMILIES[family][1]
    stock = call_image(pipe, family, **options, **{scale_arg: SCALE})
    RECORDED.clear()
    with apg.guide(pipe, Recording(SCALE, eta=1.0, norm_threshold=0.0, momentum=0.0)):
        guided = call_image(pipe, family, **options)
        assert rel_diff(guided, stock) <= 1e-4
        ratio = options.get("cfg_trunc_ratio", 1.0)
        guided_steps = sum((i + 1) / STEPS <= ratio for i in range(STEPS))
        assert len(RECORDED) == guided_steps and all(x0.shape == stock.shape for x0 in RECORDED)
        nonlinear = call_image(pipe, family, guidance=apg.APG(W, eta=0.0, norm_threshold=1.0, momentum=BETA))
        assert rel_diff(nonlinear, call_image(pipe, family, guidance=apg.CFG(W))) > 1e-3  # the hook guided
    assert torch.equal(call_image(pipe, family, **options, **{scale_arg: SCALE}), stock)  # stock again
    apg.guide(pipe, apg.CFG(SCALE))
    apg.guide(pipe, None)
    assert torch.equal(call_image(pipe, family, **options, **{scale_arg: SCALE}), stock)


def test_packed_tokens_are_guided_per_sample():
    """Qwen's packed latents [B, N, C]: norms and projections per sample, so a batch of 2 = each alone."""
    pipe, latents = pipeline("qwen"), _noise(2, 64, 16)
    with apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=0.15, momentum=BETA)):
        both = call_image(pipe, "qwen", latents=latents, num_images_per_prompt=2)
        alone = [call_image(pipe, "qwen", latents=latents[i : i + 1]) for i in range(2)]
    assert rel_diff(both, torch.cat(alone)) <= 1e-5
    assert rel_diff(alone[0], alone[1]) > 1e-1

def test_pipelines_file_takes_guidance_per_call():
    """pipelines/lumina2.py: `guidance=` per call, with Lumina2's own arguments bound through the mixin."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "pipelines", "lumina2.py")
    spec = importlib.util.spec_from_file_location("apg_pipelines_lumina2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pipe = module.APGLumina2Pipeline.from_pipe(pipeline("lumina2"))
    pipe.set_progress_bar_config(disable=True)
    options = {"cfg_trunc_ratio": 0.7, "cfg_normalization": True}
    stock = call_image(pipe, "lumina2", guidance_scale=SCALE, **options)  # no guidance=: stock
    guided = call_image(pipe, "lumina2", guidance=apg.APG(SCALE, eta=1.0, norm_threshold=0.0, momentum=0.0),
                        **options)
    assert rel_diff(guided, stock) <= 1e-4

# -- hand-written x0-space reference loops ------------------------------------------------------------------
# Norm thresholds, between the largest and smallest x0-difference norms of each model's steps.
R = {"qwen": 0.15, "lumina2": 0.8, "chroma": 0.2, "flux_kontext": 0.3}
RESCALED = []  # per step: was the threshold active?


def apg_reference(x0_cond, x0_uncond, running, r, w=W, beta=BETA):
    """Algorithm 1 with eta = 0 on [B, ...] float64 x0; returns (guided x0, running average)."""
    diff = x0_cond - x0_uncond
    running = diff if running is None else diff + beta * running
    dims = tuple(range(1, diff.ndim))
    norm = torch.linalg.vector_norm(running, dim=dims, keepdim=True)
    RESCALED.extend(bool(n > r) for n in norm.flatten())
    diff = running * torch.clamp(r / norm, max=1.0)
    parallel = (diff * x0_cond).sum(dims, keepdim=True) / (x0_cond**2).sum(dims, keepdim=True) * x0_cond
    return x0_cond + (w - 1.0) * (diff - parallel), running


def renorm(v, v_cond):
    """Qwen's and Lumina2's rescale of the combined prediction to the cond prediction's norm, over the last dim."""
    return v * (v_cond.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True))


def flow_loop(pipe, latents, velocities, r, post=renorm):
    """FlowMatch Euler sampling with APG in x0 space: x_t = (1 - s) x0 + s noise, v = noise - x0, x0 = x - s v.

    velocities(x, t, i) -> (v_cond, v_uncond) or (v_cond, None) on an unguided step; post() is the pipeline's
    own post-processing of the guided velocity.
    """
    scheduler = pipe.scheduler
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=1.0)  # what the pipelines pass
    RESCALED.clear()
    x, running = latents, None
    for i, t in enumerate(scheduler.timesteps):
        s = float(scheduler.sigmas[i])
        v_cond, v_uncond = velocities(x, t, i)
        if v_uncond is None:
            v = v_cond
        else:
            x64 = x.double()
            x0_cond, x0_uncond = x64 - s * v_cond.double(), x64 - s * v_uncond.double()
            x0, running = apg_reference(x0_cond, x0_uncond, running, r)
            v = post((x64 - x0) / s, v_cond.double())
        x = scheduler.step(v.float(), t, x).prev_sample
    return x


def check_reference(family, latents, reference, **options):
    pipe = pipeline(family)
    with apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=R[family], momentum=BETA)):
        guided = call_image(pipe, family, latents=latents, **options)
    with apg.guide(pipe, apg.CFG(W)):
        cfg = call_image(pipe, family, latents=latents, **options)
    with torch.no_grad():
        expected = reference(pipe)
    assert any(RESCALED) and not all(RESCALED)  # both branches of the threshold ran
    assert rel_diff(guided, expected) <= 1e-4
    assert rel_diff(cfg, expected) > 5e-3  # APG is not CFG here (50x the tolerance): the comparison has teeth


def _noise(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(5))


def test_qwen_matches_reference_loop():
    latents, call = _noise(1, 64, 16), IMAGE_FAMILIES["qwen"][2]()  # packed [B, tokens, 4 channels x 2x2]

    def velocities(x, t, i):
        def v(embeds, mask):
            return pipe.transformer(hidden_states=x, timestep=t.expand(1) / 1000, encoder_hidden_states=embeds,
                                    encoder_hidden_states_mask=mask, img_shapes=[[(1, 8, 8)]], return_dict=False)[0]
        return (v(call["prompt_embeds"], call["prompt_embeds_mask"]),
                v(call["negative_prompt_embeds"], call["negative_prompt_embeds_mask"]))

    pipe = pipeline("qwen")
    check_reference("qwen", latents, lambda pipe: flow_loop(pipe, latents, velocities, R["qwen"]))


@pytest.mark.parametrize("options", [{}, {"cfg_trunc_ratio": 0.7}, {"cfg_normalization": False}])
def test_lumina2_matches_reference_loop(options):
    latents, call = _noise(1, 4, 8, 8), IMAGE_FAMILIES["lumina2"][2]()
    ratio, normalize = options.get("cfg_trunc_ratio", 1.0), options.get("cfg_normalization", True)

    def velocities(x, t, i):
        def v(embeds, mask):  # Lumina2's time runs from noise (0) to image (1), so it steps -output
            timestep = (1 - t / 1000).expand(1)
            return -pipe.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds,
                                     encoder_attention_mask=mask, return_dict=False)[0]
        v_cond = v(call["prompt_embeds"], call["prompt_attention_mask"])
        if (i + 1) / STEPS > ratio:
            return v_cond, None  # truncated: no uncond pass
        return v_cond, v(call["negative_prompt_embeds"], call["negative_prompt_attention_mask"])

    pipe = pipeline("lumina2")
    post = renorm if normalize else (lambda v, v_cond: v)
    check_reference("lumina2", latents, lambda pipe: flow_loop(pipe, latents, velocities, R["lumina2"], post),
                    **options)


def test_chroma_matches_reference_loop():
    latents, call = _noise(1, 64, 4), IMAGE_FAMILIES["chroma"][2]()
    pipe = pipeline("chroma")
    image_ids = pipe._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)
    text_ids = torch.zeros(TEXT_LEN, 3)

    def velocities(x, t, i):
        def v(embeds, mask):
            mask = pipe._prepare_attention_mask(1, x.shape[1], torch.float32, mask)  # text mask + image tokens
            return pipe.transformer(hidden_states=x, timestep=t.expand(1) / 1000, encoder_hidden_states=embeds,
                                    txt_ids=text_ids, img_ids=image_ids, attention_mask=mask, return_dict=False)[0]
        return (v(call["prompt_embeds"], call["prompt_attention_mask"]),
                v(call["negative_prompt_embeds"], call["negative_prompt_attention_mask"]))

    check_reference("chroma", latents,
                    lambda pipe: flow_loop(pipe, latents, velocities, R["chroma"], lambda v, v_cond: v))


def test_flux_kontext_matches_reference_loop():
    """Kontext appends the image's tokens to the latents' and keeps the first N output tokens."""
    latents, call = _noise(1, 64, 4), IMAGE_FAMILIES["flux_kontext"][2]()
    pipe = pipeline("flux_kontext")
    image = pipe.image_processor.preprocess(call["image"], 16, 16)  # [1, 3, 16, 16] in [-1, 1]
    _, image_latents, latent_ids, image_ids = pipe.prepare_latents(image, 1, 1, 16, 16, torch.float32, "cpu")
    ids, text_ids = torch.cat([latent_ids, image_ids]), torch.zeros(TEXT_LEN, 3)

    def velocities(x, t, i):
        def v(embeds, pooled):
            out = pipe.transformer(hidden_states=torch.cat([x, image_latents], dim=1), timestep=t.expand(1) / 1000,
                                   pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                   img_ids=ids, return_dict=False)[0]
            return out[:, : x.shape[1]]
        return (v(call["prompt_embeds"], call["pooled_prompt_embeds"]),
                v(call["negative_prompt_embeds"], call["negative_pooled_prompt_embeds"]))

    check_reference("flux_kontext", latents,
                    lambda pipe: flow_loop(pipe, latents, velocities, R["flux_kontext"], lambda v, v_cond: v))

# -- HiDream: x0 of the negated output ----------------------------------------------------------------------
@torch.no_grad()
def test_hidream_x0_is_the_schedulers_own_x0_of_the_negated_output():
    pipe = pipeline("hidream")
    stock_scheduler = pipe.scheduler
    pipe.scheduler = make_scheduler("unipc_flow")  # the pipeline special-cases UniPC; its convert_model_output gives x0
    outputs, samples = [], [_noise(1, 4, 16, 16)]
    handle = pipe.transformer.register_forward_hook(lambda module, args, out: outputs.append(out[0].clone()))
    RECORDED.clear()
    try:
        with apg.guide(pipe, Recording(SCALE, eta=0.0, momentum=BETA)):
            call_image(pipe, "hidream", latents=samples[0],
                       callback_on_step_end=lambda p, i, t, kw: samples.append(kw["latents"].clone()) or {})
    finally:
        handle.remove()
        pipe.scheduler = stock_scheduler
    scheduler = make_scheduler("unipc_flow")
    scheduler.set_timesteps(STEPS)  # as the pipeline does for UniPC
    assert len(RECORDED) == len(outputs) == STEPS
    for i, (out, sample, x0) in enumerate(zip(outputs, samples, RECORDED)):
        out_cond = out.chunk(2)[1]  # one pass on [uncond, cond]
        scheduler._step_index = i
        own = scheduler.convert_model_output(-out_cond, sample=sample)  # the pipeline steps -output
        assert rel_diff(x0, own) <= 1e-5
        assert rel_diff(x0, scheduler.convert_model_output(out_cond, sample=sample)) > 1e-2  # the sign matters


# -- the registry's quirks -------------------------------------------------------------------------------
def test_register_pipeline_checks_its_quirks():
    class Pipe:
        pass

    with pytest.raises(ValueError, match=r"Truncation\(\) needs batch='separate'"):
        apg.register_pipeline(Pipe, denoiser="transformer", batch="uncond_first",
                              quirks=(apg.quirks.Truncation("cfg_trunc_ratio"),))
    with pytest.raises(TypeError, match="quirks must be apg.quirks objects, got 'Negated'"):
        apg.register_pipeline(Pipe, denoiser="transformer", batch="separate", quirks=("Negated",))
    with pytest.raises(TypeError, match=r"renorm_arg=; it is now a quirk: quirks=\(apg.quirks.RenormToCond\(arg\),\)"):
        apg.register_pipeline(Pipe, denoiser="transformer", batch="separate", renorm_arg="cfg_normalization")



def test_undeclared_truncation_is_refused():
    """Lumina2 declared without its cfg_trunc_arg: the step that skips the uncond pass raises, never runs CFG."""
    from diffusers import Lumina2Pipeline

    class UndeclaredLumina2(Lumina2Pipeline):
        pass

    apg.register_pipeline(UndeclaredLumina2, denoiser="transformer", batch="separate",
                          quirks=(apg.quirks.Negated(), apg.quirks.RenormToCond("cfg_normalization")))
    try:
        pipe = UndeclaredLumina2(**pipeline("lumina2").components)
        pipe.set_progress_bar_config(disable=True)
        with apg.guide(pipe, apg.APG(SCALE)):
            call_image(pipe, "lumina2")  # no truncation: fine
            with pytest.raises(RuntimeError, match="expected 2 transformer evaluation.*got 1"):
                call_image(pipe, "lumina2", cfg_trunc_ratio=0.7)
    finally:
        apg.registry._REGISTRY.pop(UndeclaredLumina2)  # the table stays the stock one for other tests
