"""Tiny cases of the animate family (tests/tiny_registry.py): AnimateDiff, Allegro, Latte, CogVideoX and LTX
variants, EasyAnimate.

No text encoders: the calls pass `prompt_embeds` / `negative_prompt_embeds` (and masks). AnimateDiff: the tiny SD /
SDXL UNet of tests/tiny_pipelines.py turned into a UNetMotionModel by a tiny MotionAdapter, 2 frames of 16x16
(latents [1, 4, 2, 8, 8]); the others 2 latent frames of 4x4 to 8x8. Some cases pass a call option their class
reproduces as a quirk (`guidance_rescale`, `use_dynamic_cfg`), so the tests check it too.
"""

from __future__ import annotations

import torch
from tiny_control import _SDXL_UNET, _controlnet
from tiny_pipelines import _no_bar, _sd_unet, _sd_vae, make_scheduler
from tiny_registry import Case
from tiny_video import _embeds, cogvideox_call, ltx_call, tiny_cogvideox_pipeline, tiny_ltx_pipeline

import diffusers
from diffusers import (
    AllegroPipeline,
    AllegroTransformer3DModel,
    AutoencoderKLMagvit,
    CogVideoXTransformer3DModel,
    EasyAnimateTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    LattePipeline,
    LatteTransformer3DModel,
    MotionAdapter,
    SparseControlNetModel,
)

_FRAMES = 2


def _case(build, call):
    """Case(build, run): `call()` gives the call's own arguments (fresh tensors each run)."""

    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(**{"output_type": "latent", **call(), **extra}, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(seed))
        return torch.as_tensor(out[0])

    return Case(build, run)


# -- AnimateDiff --------------------------------------------------------------------------------------------
def _motion_adapter():
    torch.manual_seed(5)
    return MotionAdapter(block_out_channels=(4, 8), motion_layers_per_block=1, motion_norm_num_groups=2,
                         motion_num_attention_heads=2, motion_max_seq_length=8).eval()


def tiny_animatediff(name: str, scheduler: str = "ddim", sdxl: bool = False, **components):
    """An AnimateDiff pipeline of class `name` (SD 1.5 or SDXL UNet + motion modules), without text encoders."""
    if sdxl:
        unet = _sd_unet(cross_attention_dim=64, projection_class_embeddings_input_dim=6 * 8 + 32, **_SDXL_UNET)
        text = dict(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    else:
        unet = _sd_unet()
        text = dict(text_encoder=None, tokenizer=None)
    return _no_bar(getattr(diffusers, name)(
        vae=_sd_vae(), unet=unet, motion_adapter=_motion_adapter(), scheduler=make_scheduler(scheduler),
        feature_extractor=None, image_encoder=None, **text, **components))


def animatediff_call(sdxl: bool = False, **extra) -> dict:
    call = dict(prompt_embeds=_embeds(10, 1, 8, 64 if sdxl else 32),
                negative_prompt_embeds=_embeds(11, 1, 8, 64 if sdxl else 32), height=16, width=16,
                num_frames=_FRAMES)
    if sdxl:
        call.update(pooled_prompt_embeds=_embeds(12, 1, 32), negative_pooled_prompt_embeds=_embeds(13, 1, 32))
    return {**call, **extra}


def _video_call(**extra) -> dict:
    call = animatediff_call(**extra)
    del call["num_frames"]  # the video's own
    return call


def _awake(controlnet):
    """The ControlNet's zero-initialised output blocks made random, so its residuals reach the unet."""
    torch.manual_seed(6)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                param.normal_(std=0.3)
    return controlnet


def _sparse_controlnet():
    """SparseCtrl with its simplified condition embedding: the conditioning frames go in as VAE latents."""
    torch.manual_seed(4)
    return _awake(SparseControlNetModel(
        in_channels=4, conditioning_channels=4, down_block_types=("DownBlockMotion", "CrossAttnDownBlockMotion"),
        block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2, cross_attention_dim=32,
        attention_head_dim=2, conditioning_embedding_out_channels=(4, 8), motion_max_seq_length=8,
        motion_num_attention_heads=2,
    ).eval())


def _frames(count: int = _FRAMES, seed: int = 20) -> torch.Tensor:
    """[count, 3, 16, 16] in [0, 1]: conditioning frames."""
    return torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _video() -> torch.Tensor:
    """The input video of the video-to-video pipelines: a list of frames [3, 16, 16] in [0, 1]."""
    return list(_frames(seed=21))


# -- DiT-style video transformers: no VAE (latent output), T5-side embeds of 8 tokens --------------------------
def tiny_allegro():
    torch.manual_seed(0)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=1,
        cross_attention_dim=24, sample_width=4, sample_height=4, sample_frames=5, caption_channels=32,
    ).eval()
    return _no_bar(AllegroPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                   scheduler=make_scheduler("euler_a")))


def allegro_call() -> dict:
    """5 frames of 32x32: 2 latent frames of 4x4 (Allegro's VAE: 8x spatial, 4x temporal)."""
    return dict(prompt_embeds=_embeds(10, 1, 8, 32), negative_prompt_embeds=_embeds(11, 1, 8, 32),
                prompt_attention_mask=torch.ones(1, 8), negative_prompt_attention_mask=torch.ones(1, 8),
                height=32, width=32, num_frames=5, max_sequence_length=8, clean_caption=False, negative_prompt=None)


def tiny_latte():
    """Latte with learned-sigma output channels (8 for 4 latent ones), as the released model."""
    torch.manual_seed(0)
    transformer = LatteTransformer3DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=32,
        in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=_FRAMES,
    ).eval()
    return _no_bar(LattePipeline(tokenizer=None, text_encoder=None, vae=_sd_vae(), transformer=transformer,
                                 scheduler=make_scheduler("ddim")))


def latte_call() -> dict:
    """2 frames of 16x16 (latents 8x8)."""
    return dict(prompt_embeds=_embeds(10, 1, 8, 32), negative_prompt_embeds=_embeds(11, 1, 8, 32), height=16,
                width=16, video_length=_FRAMES, clean_caption=False, negative_prompt=None)


# -- CogVideoX variants: tests/tiny_video.py's CogVideoX, its transformer taking 8 channels where a condition is
# concatenated to the latents (image, control video) ---------------------------------------------------------
def tiny_cogvideox(name: str, in_channels: int = 4):
    components = tiny_cogvideox_pipeline().components
    if in_channels != components["transformer"].config.in_channels:
        torch.manual_seed(0)
        config = {**components["transformer"].config, "in_channels": in_channels}
        components["transformer"] = CogVideoXTransformer3DModel.from_config(config).eval()
    return _no_bar(getattr(diffusers, name)(**components))


def _clip(seed: int) -> torch.Tensor:
    """[1, 5, 3, 32, 32] in [0, 1]: a video of 5 frames (2 latent frames)."""
    return torch.rand(1, 5, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def cogvideox_variant_call(**extra) -> dict:
    call = {**cogvideox_call(), **extra}
    if "image" not in extra:
        del call["num_frames"]  # the video's own
    return call


# -- LTX variants: tests/tiny_video.py's LTX components -----------------------------------------------------
def tiny_ltx(name: str):
    return _no_bar(getattr(diffusers, name)(**tiny_ltx_pipeline().components))


# -- EasyAnimate: Magvit VAE (8x spatial, 4x temporal), FlowMatch Euler; no text encoder -------------------
def tiny_easyanimate(name: str, in_channels: int = 4):
    """`in_channels`: the latents' 4, plus the mask's 1 and the masked video's 4 for inpainting."""
    torch.manual_seed(0)
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=in_channels, out_channels=4, time_embed_dim=2,
        text_embed_dim=16, num_layers=1, sample_width=4, sample_height=4, patch_size=2,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLMagvit(
        in_channels=3, out_channels=3,
        down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
        up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        spatial_group_norm=False,
    ).eval()
    vae.register_to_config(cache_mag_vae=True)  # read by the inpaint pipeline, not a config key of this VAE class
    return _no_bar(getattr(diffusers, name)(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
                                            scheduler=FlowMatchEulerDiscreteScheduler()))


def easyanimate_call(**extra) -> dict:
    """5 frames of 32x32: 2 latent frames of 4x4; embeds of 8 tokens with masks."""
    return dict(prompt_embeds=_embeds(10, 1, 8, 16), negative_prompt_embeds=_embeds(11, 1, 8, 16),
                prompt_attention_mask=torch.ones(1, 8), negative_prompt_attention_mask=torch.ones(1, 8),
                height=32, width=32, num_frames=5, **extra)


def _channels_first(clip: torch.Tensor) -> torch.Tensor:
    return clip.permute(0, 2, 1, 3, 4)  # [B, C, F, H, W], as EasyAnimate takes videos


def _mask_video() -> torch.Tensor:
    """[1, 1, 5, 32, 32]: the lower half to inpaint (255), the upper half kept."""
    mask = torch.zeros(1, 1, 5, 32, 32)
    mask[..., 16:, :] = 255.0
    return mask


CASES: dict[str, Case] = {
    "AnimateDiffPipeline": _case(lambda: tiny_animatediff("AnimateDiffPipeline"), animatediff_call),
    "AnimateDiffSDXLPipeline": _case(lambda: tiny_animatediff("AnimateDiffSDXLPipeline", "euler", sdxl=True),
                                     lambda: animatediff_call(sdxl=True)),
    "AnimateDiffControlNetPipeline": _case(
        lambda: tiny_animatediff("AnimateDiffControlNetPipeline", controlnet=_awake(_controlnet())),
        lambda: animatediff_call(conditioning_frames=list(_frames()))),
    "AnimateDiffSparseControlNetPipeline": _case(
        lambda: tiny_animatediff("AnimateDiffSparseControlNetPipeline", controlnet=_sparse_controlnet()),
        lambda: animatediff_call(conditioning_frames=list(_frames(1)[:, None]))),
    "AnimateDiffVideoToVideoPipeline": _case(
        lambda: tiny_animatediff("AnimateDiffVideoToVideoPipeline"),
        lambda: _video_call(video=_video())),
    "AnimateDiffVideoToVideoControlNetPipeline": _case(
        lambda: tiny_animatediff("AnimateDiffVideoToVideoControlNetPipeline", controlnet=_awake(_controlnet())),
        lambda: _video_call(video=_video(), conditioning_frames=list(_frames()))),
    "AllegroPipeline": _case(tiny_allegro, allegro_call),
    "LattePipeline": _case(tiny_latte, latte_call),
    "CogVideoXImageToVideoPipeline": _case(
        lambda: tiny_cogvideox("CogVideoXImageToVideoPipeline", in_channels=8),
        lambda: cogvideox_variant_call(image=_clip(30)[0, 0], use_dynamic_cfg=True)),
    # strength 0.7 of 3 steps: its dynamic scale counts the 2 left, not 3 (a quirk of its own)
    "CogVideoXVideoToVideoPipeline": _case(
        lambda: tiny_cogvideox("CogVideoXVideoToVideoPipeline"),
        lambda: cogvideox_variant_call(video=_clip(31), strength=0.7, use_dynamic_cfg=True)),
    "CogVideoXFunControlPipeline": _case(
        lambda: tiny_cogvideox("CogVideoXFunControlPipeline", in_channels=8),
        lambda: cogvideox_variant_call(control_video=_clip(32))),
    # guidance_rescale on: its rescale and its negated step both reproduced
    "LTXConditionPipeline": _case(lambda: tiny_ltx("LTXConditionPipeline"),
                                  lambda: {**ltx_call(), "guidance_rescale": 0.7}),
    "EasyAnimatePipeline": _case(lambda: tiny_easyanimate("EasyAnimatePipeline"),
                                 lambda: easyanimate_call(guidance_rescale=0.7)),
    "EasyAnimateInpaintPipeline": _case(
        lambda: tiny_easyanimate("EasyAnimateInpaintPipeline", in_channels=9),
        lambda: easyanimate_call(video=_channels_first(_clip(33)), mask_video=_mask_video())),
}
