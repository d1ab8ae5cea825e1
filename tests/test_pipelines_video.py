"""Video pipelines: Wan (2.1, 2.2 two experts, TI2V layout), LTX, CogVideoX, HunyuanVideo guided by apg.

For each: parity with the stock pipeline's CFG at eta=1, r=0, beta=0 (with each pipeline's own
post-processing: guidance_scale_2, guidance_rescale, dynamic CFG), a nonlinear APG run that differs, stock
behaviour back after apg.guide(pipe, None). Hand-written x0-space loops (float64 APG written here, the
transformers called directly) check Wan 2.2 and HunyuanVideo, and LTX with the guidance on unpacked latents
(packed tokens are guided consistently). CogVideoX runs on DDIMScheduler with CogVideoX-2b's scheduler config.
"""

import os

import pytest
import torch
from tiny_pipelines import rel_diff
from tiny_video import (
    VIDEO_FAMILIES,
    flow_scheduler,
    hunyuan_video_call,
    ltx_call,
    tiny_hunyuan_video_pipeline,
    tiny_ltx_pipeline,
    tiny_wan_pipeline,
    video_call,
    wan_call,
)

import apg

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, BETA, STEPS = 5.0, -0.5, 3
CFG_LIKE = dict(eta=1.0, norm_threshold=0.0, momentum=0.0)


_PIPES = {}


def pipe_for(family):
    if family not in _PIPES:
        _PIPES[family] = VIDEO_FAMILIES[family][0]()
    return _PIPES[family]


# family, extra call arguments (each pipeline's own post-processing of its CFG result)
CASES = [
    ("wan", {}),
    ("wan_i2v", {}),
    ("wan_ti2v", {}),
    ("wan22", {"guidance_scale_2": 2.0}),
    ("wan22_i2v", {"guidance_scale_2": 2.0}),
    ("ltx", {}),
    ("ltx", {"guidance_rescale": 0.7}),
    ("ltx_i2v", {}),
    ("cogvideox", {}),
    ("cogvideox", {"use_dynamic_cfg": True}),
    ("cogvideox_dpm", {}),
    ("hunyuan_video", {}),
]


@pytest.mark.parametrize("family, extra", CASES, ids=[f"{f}-{'-'.join(e) or 'plain'}" for f, e in CASES])
@torch.no_grad()
def test_parity_with_stock_cfg_apg_differs_and_stock_back(family, extra):
    pipe, scale_arg = pipe_for(family), VIDEO_FAMILIES[family][1]
    stock = video_call(pipe, family, **{scale_arg: W}, **extra)
    if extra:  # the extra argument changes the stock result: parity below is about it
        assert rel_diff(stock, video_call(pipe, family, **{scale_arg: W})) > 1e-3
    with apg.guide(pipe, apg.APG(W, **CFG_LIKE)):
        assert rel_diff(video_call(pipe, family, **extra), stock) <= 1e-4
    apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=1.0, momentum=BETA))
    assert rel_diff(video_call(pipe, family, **extra), stock) > 1e-3  # the hook ran
    apg.guide(pipe, None)
    assert rel_diff(video_call(pipe, family, **{scale_arg: W}, **extra), stock) <= 1e-6


@pytest.mark.parametrize("family", ["wan22", "ltx_i2v", "cogvideox", "hunyuan_video"])
@torch.no_grad()
def test_parity_with_two_prompts(family):
    pipe, scale_arg = pipe_for(family), VIDEO_FAMILIES[family][1]
    two = {k: torch.cat([v, v.flip(-1)]) for k, v in VIDEO_FAMILIES[family][2]().items() if k.endswith("_embeds")}
    two.update({k: torch.ones(2, 8) for k in ("prompt_attention_mask", "negative_prompt_attention_mask")
                if k in VIDEO_FAMILIES[family][2]()})
    stock = video_call(pipe, family, **{scale_arg: W}, **two)
    assert stock.shape[0] == 2
    with apg.guide(pipe, apg.APG(W, **CFG_LIKE)):
        assert rel_diff(video_call(pipe, family, **two), stock) <= 1e-4


@torch.no_grad()
def test_dynamic_cfg_with_a_per_sample_scale():
    pipe = pipe_for("cogvideox")
    stock = video_call(pipe, "cogvideox", guidance_scale=W, use_dynamic_cfg=True)
    with apg.guide(pipe, apg.APG(torch.tensor([W]), **CFG_LIKE)):
        assert rel_diff(video_call(pipe, "cogvideox", use_dynamic_cfg=True), stock) <= 1e-4


@torch.no_grad()
def test_refused_arguments_name_themselves():
    wan = pipe_for("wan22")
    with apg.guide(wan, apg.APG(W)):
        with pytest.raises(ValueError, match="guidance_scale=5.0 was passed"):
            video_call(wan, "wan22", guidance_scale=5.0)
        with pytest.raises(TypeError, match="guidance_scale_2 must be a real number, got 'high'"):
            video_call(wan, "wan22", guidance_scale_2="high")
    with apg.guide(pipe_for("wan"), apg.APG(W)):  # stock refuses guidance_scale_2 without two experts
        with pytest.raises(ValueError, match="guidance_scale_2"):
            video_call(pipe_for("wan"), "wan", guidance_scale_2=2.0)
    ltx_i2v = pipe_for("ltx_i2v")
    with apg.guide(ltx_i2v, apg.APG(W)):
        with pytest.raises(ValueError, match="guidance_rescale=0.7 is not supported by apg with LTXImageToVideo"):
            video_call(ltx_i2v, "ltx_i2v", guidance_rescale=0.7)
        video_call(ltx_i2v, "ltx_i2v", guidance_rescale=0.0)  # the default is fine


@torch.no_grad()
def test_pipelines_file_per_call_guidance_wan22():
    import importlib.util

    path = os.path.join(REPO, "pipelines", "wan.py")
    spec = importlib.util.spec_from_file_location("apg_pipelines_wan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stock = pipe_for("wan22")
    pipe = module.APGWanPipeline.from_pipe(stock)
    pipe.set_progress_bar_config(disable=True)
    reference = video_call(stock, "wan22", guidance_scale=W, guidance_scale_2=2.0)
    guided = video_call(pipe, "wan22", guidance=apg.APG(W, **CFG_LIKE), guidance_scale_2=2.0)
    assert rel_diff(guided, reference) <= 1e-4


# -- hand-written x0-space loops --------------------------------------------------------------------------
def apg_reference(x0_cond, x0_uncond, running, w, r, eta=0.0, beta=BETA, rescaled=None):
    """Algorithm 1 on [B, ...] float64 tensors, one norm per sample; returns (guided x0, running)."""
    diff = x0_cond - x0_uncond
    running = diff if running is None else diff + beta * running
    norms = [float(d.norm()) for d in running]
    if rescaled is not None:
        rescaled.extend(norm > r for norm in norms)
    diff = torch.stack([d * min(1.0, r / norm) for d, norm in zip(running, norms)])
    dims = tuple(range(1, diff.ndim))
    parallel = (diff * x0_cond).sum(dims, keepdim=True) / (x0_cond * x0_cond).sum(dims, keepdim=True) * x0_cond
    return x0_cond + (w - 1.0) * (diff - parallel + eta * parallel), running


def initial_latents(*shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def test_wan22_two_experts_match_reference_loop():
    """UniPC (Wan's default) steps the hand-mapped velocity; x0 = x - sigma v, by hand."""
    pipe, r, w2 = tiny_wan_pipeline(two_experts=True), 0.45, 2.0
    call = dict(wan_call(), latents=initial_latents(1, 16, 2, 4, 4), num_inference_steps=STEPS,
                output_type="latent", guidance_scale_2=w2)
    with apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=r, momentum=BETA)):
        guided = pipe(**call).frames

    scheduler, rescaled, experts = flow_scheduler("unipc"), [], []
    scheduler.set_timesteps(STEPS)
    x, running = call["latents"].clone(), None
    for i, t in enumerate(scheduler.timesteps):
        high_noise = t >= 0.9 * 1000  # boundary_ratio * num_train_timesteps
        model, w = (pipe.transformer, W) if high_noise else (pipe.transformer_2, w2)
        experts.append(model)
        v_cond, v_uncond = (model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=embeds,
                                  return_dict=False)[0].double()
                            for embeds in (call["prompt_embeds"], call["negative_prompt_embeds"]))
        s, xd = float(scheduler.sigmas[i]), x.double()
        x0, running = apg_reference(xd - s * v_cond, xd - s * v_uncond, running, w, r, rescaled=rescaled)
        x = scheduler.step(((xd - x0) / s).float(), t, x).prev_sample
    assert pipe.transformer in experts and pipe.transformer_2 in experts and any(rescaled) and not all(rescaled)
    assert rel_diff(guided, x) <= 1e-4
    assert rel_diff(pipe(**{**call, "guidance_scale": W}).frames, x) > 1e-3  # APG is not CFG here


@torch.no_grad()
def test_hunyuan_video_matches_reference_loop():
    """FlowMatch Euler by hand: x0 = x - sigma v, x' = x + (sigma' - sigma) (x - x0) / sigma."""
    pipe, r = tiny_hunyuan_video_pipeline("euler"), 0.4
    call = dict(hunyuan_video_call(), latents=initial_latents(1, 4, 2, 4, 4), num_inference_steps=STEPS,
                output_type="latent")
    with apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=r, momentum=BETA)):
        guided = pipe(**call).frames
    sigmas, timesteps = pipe.scheduler.sigmas.tolist(), pipe.scheduler.timesteps  # the run's noise table

    embedded = torch.tensor([call["guidance_scale"]]) * 1000.0  # distilled guidance: an input, not CFG
    rescaled, x, running = [], call["latents"].double(), None
    for i, t in enumerate(timesteps):
        v_cond, v_uncond = (
            pipe.transformer(hidden_states=x.float(), timestep=t.expand(1),
                             encoder_hidden_states=call[p + "prompt_embeds"],
                             encoder_attention_mask=call[p + "prompt_attention_mask"],
                             pooled_projections=call[p + "pooled_prompt_embeds"], guidance=embedded,
                             return_dict=False)[0].double()
            for p in ("", "negative_")
        )
        s, s_next = sigmas[i], sigmas[i + 1]
        x0, running = apg_reference(x - s * v_cond, x - s * v_uncond, running, W, r, rescaled=rescaled)
        x = x + (s_next - s) * (x - x0) / s
    assert any(rescaled) and not all(rescaled)  # both branches of the threshold
    assert rel_diff(guided, x) <= 1e-4
    assert rel_diff(pipe(**{**call, "true_cfg_scale": W}).frames, x) > 1e-3


@torch.no_grad()
def test_ltx_packed_tokens_equal_guidance_on_unpacked_latents():
    """The reference unpacks each x0 to [B, C, F, H, W] before APG: per-sample norms ignore the layout."""
    pipe, r = tiny_ltx_pipeline(), 1.0
    call = dict(ltx_call(), num_inference_steps=STEPS, output_type="latent",
                latents=initial_latents(1, 128, 8))  # [B, N, C]: 2 frames of 8x8 tokens, 8 channels
    with apg.guide(pipe, apg.APG(W, eta=0.0, norm_threshold=r, momentum=BETA)):
        guided = pipe(**call).frames
    sigmas, timesteps = pipe.scheduler.sigmas.tolist(), pipe.scheduler.timesteps

    def unpack(tokens):  # [B, N, C] -> [B, C, F, H, W]
        return pipe._unpack_latents(tokens, 2, 8, 8, 1, 1)

    embeds = torch.cat([call["negative_prompt_embeds"], call["prompt_embeds"]])
    mask = torch.cat([call["negative_prompt_attention_mask"], call["prompt_attention_mask"]])
    rope = (pipe.vae_temporal_compression_ratio / 25, pipe.vae_spatial_compression_ratio,
            pipe.vae_spatial_compression_ratio)  # frame_rate 25, the default
    rescaled, x, running = [], call["latents"].double(), None
    for i, t in enumerate(timesteps):
        v = pipe.transformer(hidden_states=torch.cat([x, x]).float(), encoder_hidden_states=embeds,
                             timestep=t.expand(2), encoder_attention_mask=mask, num_frames=2, height=8, width=8,
                             rope_interpolation_scale=rope, return_dict=False)[0].double()
        v_uncond, v_cond = v.chunk(2)
        s, s_next = sigmas[i], sigmas[i + 1]
        x0, running = apg_reference(unpack(x - s * v_cond), unpack(x - s * v_uncond), running, W, r,
                                    rescaled=rescaled)
        x0 = pipe._pack_latents(x0)  # back to [B, N, C]
        x = x + (s_next - s) * (x - x0) / s
    assert any(rescaled) and not all(rescaled)  # both branches of the threshold
    assert rel_diff(guided, x) <= 1e-4
    assert rel_diff(pipe(**{**call, "guidance_scale": W}).frames, x) > 1e-3


@pytest.mark.parametrize("patch_size, patch_size_t", [(1, 1), (2, 1)])
def test_guidance_is_layout_invariant(patch_size, patch_size_t):
    """APG (rescaling, projection, momentum) on packed tokens or [B, F, C, H, W] equals it on [B, C, F, H, W]."""
    from diffusers import LTXPipeline

    gen = torch.Generator().manual_seed(0)
    steps = [(torch.randn(2, 4, 2, 4, 4, generator=gen), torch.randn(2, 4, 2, 4, 4, generator=gen)) for _ in range(2)]
    layouts = {
        "packed": (lambda x: LTXPipeline._pack_latents(x, patch_size, patch_size_t),
                   lambda x: LTXPipeline._unpack_latents(x, 2 // patch_size_t, 4 // patch_size, 4 // patch_size,
                                                         patch_size, patch_size_t)),
        "frames_first": (lambda x: x.transpose(1, 2), lambda x: x.transpose(1, 2)),  # CogVideoX's layout
    }
    expected, g = [], apg.APG(W, eta=0.2, norm_threshold=3.0, momentum=BETA)
    for cond, uncond in steps:
        expected.append(g(cond, uncond))
    for to_layout, back in layouts.values():
        g.reset()
        for (cond, uncond), want in zip(steps, expected):
            assert torch.allclose(back(g(to_layout(cond), to_layout(uncond))), want, atol=1e-6)
