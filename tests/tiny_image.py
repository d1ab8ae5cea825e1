"""Tiny randomly initialised image pipelines with their own CFG post-processing (Qwen-Image, Chroma, HiDream,
Lumina2, Flux Kontext and img2img), for offline tests: no text encoders, the calls pass random embeddings.

Every builder seeds torch itself, so two calls give identical weights. IMAGE_FAMILIES maps a family to its
builder, its scale argument and its call arguments (embeddings, masks, image inputs).
"""

from __future__ import annotations

import contextlib
import unittest.mock

import numpy as np
import PIL.Image
import torch
from tiny_pipelines import _flow_vae, _no_bar, make_scheduler

from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FluxImg2ImgPipeline,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
    QwenImageEditPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)

TEXT_LEN = 8  # tokens per prompt embedding


def _qwen_parts():
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()
    return dict(transformer=transformer, vae=vae, scheduler=make_scheduler("flow_euler"), text_encoder=None,
                tokenizer=None)


def tiny_qwen_pipeline():
    """Qwen-Image: packed latents [B, 64 tokens, 16] (32x32 images, VAE x2, 2x2 patches)."""
    return _no_bar(QwenImagePipeline(**_qwen_parts()))


def tiny_qwen_edit_pipeline():
    return _no_bar(QwenImageEditPipeline(**_qwen_parts(), processor=None))


def tiny_chroma_pipeline():
    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 4, 8), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1,
    ).eval()
    return _no_bar(ChromaPipeline(scheduler=make_scheduler("flow_euler"), vae=_flow_vae(1), text_encoder=None,
                                  tokenizer=None, transformer=transformer))


def _flux_transformer():
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()


def tiny_flux_kontext_pipeline():
    return _no_bar(FluxKontextPipeline(
        scheduler=make_scheduler("flow_euler"), vae=_flow_vae(1), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, transformer=_flux_transformer(),
    ))


def tiny_flux_img2img_pipeline():
    return _no_bar(FluxImg2ImgPipeline(
        scheduler=make_scheduler("flow_euler"), vae=_flow_vae(1), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, transformer=_flux_transformer(),
    ))


def tiny_hidream_pipeline():
    """HiDream with its mixture-of-experts blocks; latents [B, 4, 16, 16], one pass on [uncond, cond]."""
    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1),
    ).eval()
    parts = {f"{kind}{suffix}": None for kind in ("text_encoder", "tokenizer") for suffix in ("", "_2", "_3", "_4")}
    pipe = HiDreamImagePipeline(scheduler=make_scheduler("flow_euler"), vae=_flow_vae(4), transformer=transformer,
                                **parts)
    pipe.default_sample_size = 16  # the pipeline rescales every request to this side's area (1024 px stock)
    return _no_bar(pipe)


def tiny_lumina2_pipeline():
    """Lumina2: latents [B, 4, 8, 8] (64x64 images; the pipeline fixes the VAE factor at 8)."""
    torch.manual_seed(0)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, norm_eps=1e-5, scaling_factor=1.0,
        axes_dim_rope=(4, 4, 8), axes_lens=(32, 32, 32), cap_feat_dim=16,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(
        block_out_channels=(4,), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=1,
        sample_size=32,
    ).eval()
    return _no_bar(Lumina2Pipeline(transformer=transformer, scheduler=make_scheduler("flow_euler"), vae=vae,
                                   text_encoder=None, tokenizer=None))


# -- calls --------------------------------------------------------------------------------------------------
def _embeds(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mask(length=TEXT_LEN, valid=6, dtype=torch.long):
    return (torch.arange(length) < valid).to(dtype)[None]  # [1, L]: the last tokens are padding


def _qwen_call():
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=10), prompt_embeds_mask=_mask(),
                negative_prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=11), negative_prompt_embeds_mask=_mask(valid=4))


def _flux_call():
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 32, seed=10), pooled_prompt_embeds=_embeds(1, 32, seed=12),
                negative_prompt_embeds=_embeds(1, TEXT_LEN, 32, seed=11),
                negative_pooled_prompt_embeds=_embeds(1, 32, seed=13), height=16, width=16)


def _image(size):
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def _hidream_call():
    return dict(
        prompt_embeds_t5=_embeds(1, TEXT_LEN, 32, seed=10), negative_prompt_embeds_t5=_embeds(1, TEXT_LEN, 32, seed=11),
        prompt_embeds_llama3=_embeds(2, 1, TEXT_LEN, 16, seed=12),  # [llama layers, B, L, C]
        negative_prompt_embeds_llama3=_embeds(2, 1, TEXT_LEN, 16, seed=13),
        pooled_prompt_embeds=_embeds(1, 64, seed=14), negative_pooled_prompt_embeds=_embeds(1, 64, seed=15),
        height=16, width=16,
    )


def _lumina2_call():
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=10), prompt_attention_mask=_mask(),
                negative_prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=11),
                negative_prompt_attention_mask=_mask(valid=4), height=64, width=64)


# family -> (builder, scale argument, call kwargs factory)
IMAGE_FAMILIES = {
    "qwen": (tiny_qwen_pipeline, "true_cfg_scale", lambda: {**_qwen_call(), "height": 32, "width": 32}),
    "qwen_edit": (
        tiny_qwen_edit_pipeline, "true_cfg_scale", lambda: {**_qwen_call(), "image": _image(32), "height": 32,
                                                           "width": 32},
    ),
    "chroma": (
        tiny_chroma_pipeline, "guidance_scale",
        lambda: dict(prompt_embeds=_embeds(1, TEXT_LEN, 32, seed=10), prompt_attention_mask=_mask(dtype=torch.float),
                     negative_prompt_embeds=_embeds(1, TEXT_LEN, 32, seed=11),
                     negative_prompt_attention_mask=_mask(valid=4, dtype=torch.float), height=16, width=16),
    ),
    "flux_kontext": (
        tiny_flux_kontext_pipeline, "true_cfg_scale",
        lambda: {**_flux_call(), "image": _image(16), "max_area": 16 * 16, "_auto_resize": False},
    ),
    "flux_img2img": (
        tiny_flux_img2img_pipeline, "true_cfg_scale", lambda: {**_flux_call(), "image": _image(16), "strength": 0.75},
    ),
    "hidream": (tiny_hidream_pipeline, "guidance_scale", _hidream_call),
    "lumina2": (tiny_lumina2_pipeline, "guidance_scale", _lumina2_call),
}


def call_image(pipe, family: str, steps: int = 3, seed: int = 0, **kwargs) -> torch.Tensor:
    """Run `pipe` like IMAGE_FAMILIES[family] with a fresh seeded generator; the latents it returns."""
    base = {"output_type": "latent", **IMAGE_FAMILIES[family][2]()}
    if family == "flux_img2img":
        steps = steps * 4 // 3  # strength 0.75 runs 3 of 4
    with _small_edit_images() if family == "qwen_edit" else contextlib.nullcontext():
        out = pipe(**{**base, **kwargs}, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    return out[0]


def _small_edit_images():
    """Qwen-Image-Edit resizes its input image to ~1024² px whatever the call asks; keep it at 32x32 here."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

    small = lambda area, ratio: (32, 32, None)  # noqa: E731 (width, height, _)
    return unittest.mock.patch.object(pipeline_qwenimage_edit, "calculate_dimensions", small)
