"""Tiny randomly initialised video pipelines (Wan, LTX, CogVideoX, HunyuanVideo) for offline tests.

No text encoders or tokenizers: calls pass `prompt_embeds` / `negative_prompt_embeds` (and masks), made
here from a seed. Latents have 2 frames of 4x4 (LTX: 2 frames of 2x2 tokens); every builder seeds torch
itself, so two calls give identical weights.
"""

from __future__ import annotations

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)


def _no_bar(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embeds(seed: int, *shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def flow_scheduler(name: str = "unipc"):
    """Wan's default (UniPC, flow prediction, shift 3) or FlowMatch Euler."""
    if name == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


# -- Wan ----------------------------------------------------------------------------------------------------
def _wan_transformer(seed: int, in_channels: int = 16, heads: int = 2, layers: int = 1, image_dim=None):
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=12, in_channels=in_channels,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=16 * heads, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_dim,
    ).eval()


def _wan_vae():
    torch.manual_seed(3)
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def _clip_image_encoder():
    torch.manual_seed(4)
    config = CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, intermediate_size=8, patch_size=16)
    return CLIPVisionModelWithProjection(config).eval(), CLIPImageProcessor(crop_size=32, size=32)


def tiny_wan_pipeline(scheduler: str = "unipc", two_experts: bool = False, image_to_video: bool = False,
                      expand_timesteps: bool = False, heads: int = 2, layers: int = 1):
    """Wan 2.1 (one transformer) or Wan 2.2 (`two_experts`: transformer_2 below boundary_ratio 0.9).

    Image-to-video: Wan 2.1 with a CLIP image encoder, Wan 2.2 A14B without (`two_experts`), or the TI2V
    layout (`expand_timesteps`: frame 0 of the latents is the encoded image).
    """
    cls = WanImageToVideoPipeline if image_to_video else WanPipeline
    extra, in_channels, image_dim = {}, 16, None
    if image_to_video:
        extra = {"image_encoder": None, "image_processor": None, "expand_timesteps": expand_timesteps}
        if not expand_timesteps:
            in_channels = 16 + 4 + 16  # latents, frame mask, encoded first frame
        if not (two_experts or expand_timesteps):
            extra["image_encoder"], extra["image_processor"] = _clip_image_encoder()
            image_dim = 4
    return _no_bar(cls(
        tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=flow_scheduler(scheduler),
        transformer=_wan_transformer(0, in_channels, heads, layers, image_dim),
        transformer_2=_wan_transformer(1, in_channels, heads, layers, image_dim) if two_experts else None,
        boundary_ratio=0.9 if two_experts else None, **extra,
    ))


def wan_call(image_to_video: bool = False) -> dict:
    """Call arguments: 5 frames of 32x32 (2 latent frames of 4x4), embeds of 8 tokens."""
    call = dict(prompt_embeds=_embeds(10, 1, 8, 32), negative_prompt_embeds=_embeds(11, 1, 8, 32), height=32,
                width=32, num_frames=5)
    if image_to_video:
        call["image"] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    return call


# -- LTX ----------------------------------------------------------------------------------------------------
def tiny_ltx_pipeline(image_to_video: bool = False):
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    cls = LTXImageToVideoPipeline if image_to_video else LTXPipeline
    return _no_bar(cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                       transformer=transformer))


def ltx_call(image_to_video: bool = False) -> dict:
    """5 frames of 32x32 (2 latent frames of 8x8, packed to [B, 128, 8]); embeds of 8 tokens with masks."""
    call = dict(prompt_embeds=_embeds(10, 1, 8, 32), negative_prompt_embeds=_embeds(11, 1, 8, 32),
                prompt_attention_mask=torch.ones(1, 8), negative_prompt_attention_mask=torch.ones(1, 8),
                height=32, width=32, num_frames=5)
    if image_to_video:
        call["image"] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    return call


# -- CogVideoX ----------------------------------------------------------------------------------------------
def cogvideox_scheduler(cls=CogVideoXDDIMScheduler):
    """CogVideoX-2b's scheduler config (v-prediction, zero terminal SNR, trailing spacing); DDIM (2b) or DPM (5b)."""
    return cls(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing",
    )


def tiny_cogvideox_pipeline(scheduler_cls=CogVideoXDDIMScheduler):
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=5, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    return _no_bar(CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                     scheduler=cogvideox_scheduler(scheduler_cls)))


def cogvideox_call() -> dict:
    """5 frames of 32x32 (2 latent frames of 4x4), embeds of 8 tokens."""
    return dict(prompt_embeds=_embeds(10, 1, 8, 32), negative_prompt_embeds=_embeds(11, 1, 8, 32), height=32,
                width=32, num_frames=5, max_sequence_length=8)


# -- HunyuanVideo -------------------------------------------------------------------------------------------
def tiny_hunyuan_video_pipeline(scheduler: str = "euler"):
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True,
    ).eval()
    return _no_bar(HunyuanVideoPipeline(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, vae=vae, transformer=transformer,
        scheduler=flow_scheduler(scheduler),
    ))


def hunyuan_video_call() -> dict:
    """5 frames of 32x32 (2 latent frames of 4x4); Llama-side embeds of 8 tokens and CLIP-side pooled ones."""
    return dict(prompt_embeds=_embeds(10, 1, 8, 16), negative_prompt_embeds=_embeds(11, 1, 8, 16),
                pooled_prompt_embeds=_embeds(12, 1, 8), negative_pooled_prompt_embeds=_embeds(13, 1, 8),
                prompt_attention_mask=torch.ones(1, 8), negative_prompt_attention_mask=torch.ones(1, 8),
                height=32, width=32, num_frames=5, guidance_scale=6.0)


# family -> (builder, stock scale argument, call kwargs)
VIDEO_FAMILIES = {
    "wan": (tiny_wan_pipeline, "guidance_scale", wan_call),
    "wan_i2v": (lambda: tiny_wan_pipeline(image_to_video=True), "guidance_scale", lambda: wan_call(True)),
    "wan22": (lambda: tiny_wan_pipeline(two_experts=True), "guidance_scale", wan_call),
    "wan_ti2v": (lambda: tiny_wan_pipeline(image_to_video=True, expand_timesteps=True), "guidance_scale",
                 lambda: wan_call(True)),
    "wan22_i2v": (lambda: tiny_wan_pipeline(two_experts=True, image_to_video=True), "guidance_scale",
                  lambda: wan_call(True)),
    "ltx": (tiny_ltx_pipeline, "guidance_scale", ltx_call),
    "ltx_i2v": (lambda: tiny_ltx_pipeline(image_to_video=True), "guidance_scale", lambda: ltx_call(True)),
    "cogvideox": (tiny_cogvideox_pipeline, "guidance_scale", cogvideox_call),
    # CogVideoXDPMScheduler.step takes (model_output, old_pred_original_sample, timestep, timestep_back, sample)
    "cogvideox_dpm": (lambda: tiny_cogvideox_pipeline(CogVideoXDPMScheduler), "guidance_scale", cogvideox_call),
    "hunyuan_video": (tiny_hunyuan_video_pipeline, "true_cfg_scale", hunyuan_video_call),
}


def video_call(pipe, family: str, steps: int = 3, seed: int = 0, **kwargs) -> torch.Tensor:
    """Run `pipe` like VIDEO_FAMILIES[family] with a fresh seeded generator; the latents."""
    base = {"output_type": "latent", **VIDEO_FAMILIES[family][2]()}
    out = pipe(**{**base, **kwargs}, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    return torch.as_tensor(out[0])
