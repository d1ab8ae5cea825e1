"""Tiny cases (family module of tests/tiny_registry.py), frames and flow schedules: Cosmos 2 text-to-image (EDM-style
Karras sigmas from 80 on a FlowMatch scheduler), Mochi (inverted sigmas), LongCat-AudioDiT (inverted sigmas, prompts
only) and PRX pixel (x0 prediction in pixel space). Each builder reuses the tiny parts of tiny_misc / tiny_pipelines /
tiny_video and seeds torch itself."""

from __future__ import annotations

import functools

import torch
from tiny_control import _randn
from tiny_misc import _generator, _NoGuardrail, _prx_run, _unzero
from tiny_registry import Case

import diffusers

CASES: dict = {}


# -- Cosmos 2 text-to-image: Wan VAE (only its scale factors are read: latent output), a tiny Cosmos DiT, the hub's
# FlowMatch scheduler with Karras sigmas from sigma_max=80 (EDM preconditioning in the loop), a stand-in guardrail;
# from_config warns that the sigma_* keys are not FlowMatch arguments: the pipeline registers them on its config ----
def _cosmos2_text_to_image():
    from tiny_video import _wan_vae

    torch.manual_seed(0)
    transformer = diffusers.CosmosTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=1, mlp_ratio=2,
        text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 16, 16), patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=True, extra_pos_embed_type=None,
    ).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config({
        "use_karras_sigmas": True, "shift": 1.0, "sigma_max": 80.0, "sigma_min": 0.002, "sigma_data": 1.0,
        "final_sigmas_type": "sigma_min"})
    pipe = diffusers.Cosmos2TextToImagePipeline(text_encoder=None, tokenizer=None, transformer=transformer,
                                                vae=_wan_vae(), scheduler=scheduler,
                                                safety_checker=_NoGuardrail())  # refuses to run without one
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cosmos2_text_to_image_run(pipe, steps=3, seed=0, **extra):
    out = pipe(prompt_embeds=_randn(1, 6, 16, seed=8), negative_prompt_embeds=_randn(1, 6, 16, seed=9), height=64,
               width=64, output_type="latent", num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["Cosmos2TextToImagePipeline"] = Case(_cosmos2_text_to_image, _cosmos2_text_to_image_run)


# -- Mochi: a tiny Mochi DiT on [B, 12, F, H, W] latents, FlowMatch with inverted sigmas (its real config), the
# linear-quadratic sigma schedule of the pipeline; no VAE (latent output: the pipeline hard-codes its scale factors) --
def _mochi():
    torch.manual_seed(0)
    transformer = diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, pooled_projection_dim=16,
        in_channels=12, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu",
        max_sequence_length=16,
    ).eval()
    pipe = diffusers.MochiPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True), vae=None,
                                   text_encoder=None, tokenizer=None,
                                   transformer=_unzero(transformer))  # its zero-initialised RoPE frequencies
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _mochi_run(pipe, steps=3, seed=0, **extra):
    mask = torch.ones(1, 6, dtype=torch.long)
    out = pipe(prompt_embeds=_randn(1, 6, 16, seed=8), negative_prompt_embeds=_randn(1, 6, 16, seed=9),
               prompt_attention_mask=mask, negative_prompt_attention_mask=mask, height=32, width=32, num_frames=7,
               output_type="latent", num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["MochiPipeline"] = Case(_mochi, _mochi_run)


# -- LongCat-AudioDiT: takes prompts only (no prompt_embeds argument), so a tiny UMT5 and a word-level tokenizer encode
# them; the scheduler is the one the pipeline constructs itself (FlowMatch, shift 1, inverted sigmas); a tiny VAE
# sizes the latents (sample_rate 16, downsampling_ratio 2: 1 s is 8 latent frames) and is not run (latent output) ----
def _longcat_audio_dit():
    from tiny_pipelines import word_tokenizer
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = word_tokenizer("t5")
    torch.manual_seed(2)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    torch.manual_seed(0)
    transformer = diffusers.LongCatAudioDiTTransformer(
        dit_dim=16, dit_depth=1, dit_heads=2, dit_text_dim=16, latent_dim=4, ff_mult=2.0).eval()
    torch.manual_seed(3)
    vae = diffusers.LongCatAudioDiTVae(in_channels=1, channels=4, c_mults=[1], strides=[2], latent_dim=4,
                                       encoder_latent_dim=8, downsampling_ratio=2, sample_rate=16).eval()
    pipe = diffusers.LongCatAudioDiTPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                             transformer=_unzero(transformer))  # its zero-initialised AdaLN / output
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _longcat_audio_dit_run(pipe, steps=3, seed=0, **extra):
    out = pipe(prompt="a photo of a cat", negative_prompt="a blue car", audio_duration_s=1.0, output_type="latent",
               num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["LongCatAudioDiTPipeline"] = Case(_longcat_audio_dit, _longcat_audio_dit_run)


# -- PRX pixel: the PRX DiT on RGB pixels (3 channels, bottleneck patch projection, resolution embedding), predicting
# x0 that the loop turns into a velocity; default FlowMatch scheduler; noise scaled by 2; no resolution binning ------
def _prx_pixel():
    torch.manual_seed(0)
    transformer = diffusers.PRXTransformer2DModel(
        in_channels=3, patch_size=2, context_in_dim=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=1,
        axes_dim=[8, 8], bottleneck_size=8, resolution_embeds=True,
    ).eval()
    pipe = diffusers.PRXPixelPipeline(transformer=_unzero(transformer),  # its zero-initialised modulation
                                      scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), text_encoder=None,
                                      tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES["PRXPixelPipeline"] = Case(_prx_pixel, functools.partial(_prx_run, size=16))  # PRX's call, on 16 x 16 pixels


# -- SD latent upscaler: a K-diffusion UNet (Fourier time embedding, K-blocks) on [latents, image latents] whose fifth
# output channel is an unused variance; Euler predicting x0 ("sample"), as the hub's; the image given as latents
# (4 channels: not encoded), all embeddings given (its pooled ones condition the timestep), latent output ------------
def _latent_upscale():
    from tiny_pipelines import _sd_vae

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(  # its K-blocks need groups of 32 channels and this depth to line up
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None, block_out_channels=(32, 32, 64, 64),
        time_cond_proj_dim=128 + 16, conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=16,
        down_block_types=("KDownBlock2D",) + ("KCrossAttnDownBlock2D",) * 3, in_channels=8, mid_block_type=None,
        only_cross_attention=False, out_channels=5, resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier", timestep_post_act="gelu",
        up_block_types=("KCrossAttnUpBlock2D",) * 3 + ("KUpBlock2D",),
    ).eval()
    pipe = diffusers.StableDiffusionLatentUpscalePipeline(
        vae=_sd_vae(), text_encoder=None, tokenizer=None, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(prediction_type="sample"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latent_upscale_run(pipe, steps=3, seed=0, **extra):
    out = pipe(image=_randn(1, 4, 8, 8, seed=5), prompt_embeds=_randn(1, 6, 16, seed=8),
               negative_prompt_embeds=_randn(1, 6, 16, seed=9), pooled_prompt_embeds=_randn(1, 16, seed=10),
               negative_pooled_prompt_embeds=_randn(1, 16, seed=11), output_type="latent",
               num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["StableDiffusionLatentUpscalePipeline"] = Case(_latent_upscale, _latent_upscale_run)
