"""Tiny pipelines that guide through a Diffusers guider slot: classic ones that take a `guider`, and modular ones
assembled from a family's core denoise blocks. Random weights, nothing from a hub; each holds Diffusers'
ClassifierFreeGuidance(W) in its guider slot(s), the stock behaviour apg's parity is checked against.
"""

from __future__ import annotations

import importlib

import torch
from PIL import Image
from tiny_control import tiny_z_image_pipeline
from tiny_image import tiny_qwen_pipeline
from tiny_pipelines import _sd_unet, make_scheduler, tiny_sd3_pipeline
from tiny_video import _wan_transformer, _wan_vae, flow_scheduler, tiny_ltx_pipeline

from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from diffusers import (
    AutoencoderKLHunyuanVideo15,
    FlowMatchEulerDiscreteScheduler,
    Flux2Transformer2DModel,
    HunyuanImagePipeline,
    HunyuanImageRefinerPipeline,
    HunyuanImageTransformer2DModel,
    HunyuanVideo15ImageToVideoPipeline,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
    MotifVideoImage2VideoPipeline,
    MotifVideoPipeline,
    MotifVideoTransformer3DModel,
)
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.modular_pipelines import ModularPipeline
from diffusers.utils import logging as diffusers_logging

W = 4.0  # the stock guiders' scale

diffusers_logging.set_verbosity_error()  # the guiders' 'experimental' warning at every construction


def _embeds(generator, *shape):
    return torch.randn(shape, generator=generator)


def _ones(*shape):
    return torch.ones(shape, dtype=torch.long)


# -- classic: HunyuanVideo 1.5 -------------------------------------------------------------------------------
def hunyuan_video15():
    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(2, 2, 4),
        task_type="t2v",
    ).eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                                      spatial_compression_ratio=2, temporal_compression_ratio=1)
    pipe = HunyuanVideo15Pipeline(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), guider=ClassifierFreeGuidance(guidance_scale=W),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_video15_i2v():
    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(2, 2, 4),
        task_type="i2v", target_size=16,
    ).eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                                      spatial_compression_ratio=2, temporal_compression_ratio=1)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8,
    )).eval()
    pipe = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), guider=ClassifierFreeGuidance(guidance_scale=W),
        image_encoder=image_encoder, feature_extractor=SiglipImageProcessor(size={"height": 16, "width": 16}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _hunyuan_video15_i2v_call(steps, seed):
    call = _hunyuan_video15_call(steps, seed)
    del call["height"], call["width"]  # from the image
    pixels = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(101))
    return call | dict(image=Image.fromarray((pixels * 255).to(torch.uint8).numpy()))


def _hunyuan_video15_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    embeds = {}
    for prefix in ("", "negative_"):
        embeds |= {f"{prefix}prompt_embeds": _embeds(g, 1, 6, 16), f"{prefix}prompt_embeds_mask": _ones(1, 6),
                   f"{prefix}prompt_embeds_2": _embeds(g, 1, 4, 8), f"{prefix}prompt_embeds_mask_2": _ones(1, 4)}
    return dict(**embeds, height=16, width=16, num_frames=1, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


# -- classic: HunyuanImage (guider, and ocr_guider for prompts with glyph embeddings) --------------------------------
def hunyuan_image():
    torch.manual_seed(0)
    transformer = HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8, rope_axes_dim=(4, 4),
    ).eval()
    pipe = HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, transformer=transformer, guider=ClassifierFreeGuidance(guidance_scale=W),
        ocr_guider=ClassifierFreeGuidance(guidance_scale=W),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_image_refiner():
    torch.manual_seed(0)
    transformer = HunyuanImageTransformer2DModel(
        in_channels=8, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=(1, 1, 1), guidance_embeds=True, text_embed_dim=16, rope_axes_dim=(2, 2, 4),
    ).eval()
    pipe = HunyuanImageRefinerPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None, tokenizer=None,
        transformer=transformer, guider=ClassifierFreeGuidance(guidance_scale=W),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _hunyuan_image_refiner_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    return dict(image=_embeds(g, 1, 4, 1, 4, 4), prompt_embeds=_embeds(g, 1, 6, 16), prompt_embeds_mask=_ones(1, 6),
                negative_prompt_embeds=_embeds(g, 1, 6, 16), negative_prompt_embeds_mask=_ones(1, 6), height=64,
                width=64, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


# -- classic: Motif video (reads num_conditions before each step's set_state) ------------------------------------
def motif_video():
    torch.manual_seed(0)
    transformer = MotifVideoTransformer3DModel(
        in_channels=33, out_channels=16, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, text_embed_dim=16, rope_axes_dim=(2, 2, 4),
    ).eval()
    pipe = MotifVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_wan_vae(), text_encoder=None,
                              tokenizer=None, transformer=transformer, guider=ClassifierFreeGuidance(guidance_scale=W))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def motif_video_i2v():
    components = motif_video().components
    pipe = MotifVideoImage2VideoPipeline(**(components | {"feature_extractor": None}))  # no image encoder: no SigLIP
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _motif_i2v_call(steps, seed):
    return _motif_call(steps, seed) | dict(prompt=None, image=_hunyuan_video15_i2v_call(steps, seed)["image"])


def _motif_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    return dict(prompt_embeds=_embeds(g, 1, 6, 16), prompt_attention_mask=_ones(1, 6),
                negative_prompt_embeds=_embeds(g, 1, 6, 16), negative_prompt_attention_mask=_ones(1, 6), height=32,
                width=32, num_frames=5, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


def _hunyuan_image_call(steps, seed):
    call = _hunyuan_video15_call(steps, seed)
    for key in ("num_frames", "output_type"):
        del call[key]
    return call | dict(height=64, width=64, output_type="latent")


# -- modular ---------------------------------------------------------------------------------------------------
def _modular(blocks, **components):
    pipe = blocks.init_pipeline()
    pipe.update_components(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_modular():
    from diffusers.modular_pipelines.stable_diffusion_xl.modular_blocks_stable_diffusion_xl import (
        StableDiffusionXLCoreDenoiseStep,
    )

    unet = _sd_unet(
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), cross_attention_dim=64, norm_num_groups=1,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    return _modular(StableDiffusionXLCoreDenoiseStep(), unet=unet, scheduler=make_scheduler("euler"),
                    guider=ClassifierFreeGuidance(guidance_scale=W))


def _pooled_call(text_width, pooled_width, size):
    """Call arguments of an SD-style pipeline: text and pooled embeddings, both signs."""

    def call(steps, seed):
        g = torch.Generator().manual_seed(100)
        return dict(prompt_embeds=_embeds(g, 1, 8, text_width), negative_prompt_embeds=_embeds(g, 1, 8, text_width),
                    pooled_prompt_embeds=_embeds(g, 1, pooled_width),
                    negative_pooled_prompt_embeds=_embeds(g, 1, pooled_width), height=size, width=size,
                    num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))

    return call


def wan_modular():
    from diffusers.modular_pipelines.wan.modular_blocks_wan import WanCoreDenoiseStep

    return _modular(WanCoreDenoiseStep(), transformer=_wan_transformer(0), scheduler=flow_scheduler("unipc"),
                    guider=ClassifierFreeGuidance(guidance_scale=W))


def wan22_modular():
    from diffusers.modular_pipelines.wan.modular_blocks_wan22 import Wan22CoreDenoiseStep

    # boundary_ratio 0.7: steps on both sides of the switch with a few steps
    return _modular(Wan22CoreDenoiseStep(), transformer=_wan_transformer(0), transformer_2=_wan_transformer(1),
                    scheduler=flow_scheduler("unipc"), guider=ClassifierFreeGuidance(guidance_scale=W),
                    guider_2=ClassifierFreeGuidance(guidance_scale=W), boundary_ratio=0.7)


def _wan_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    return dict(prompt_embeds=_embeds(g, 1, 8, 32), negative_prompt_embeds=_embeds(g, 1, 8, 32), height=32,
                width=32, num_frames=5, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


def _blocks(path):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(f"diffusers.modular_pipelines.{module}"), name)()


def _from_classic(blocks, classic, *names):
    """A modular pipeline of `blocks` with the named components of a tiny classic pipeline and CFG(W) as guider."""
    components = classic().components
    return _modular(_blocks(blocks), **{n: components[n] for n in names},
                    guider=ClassifierFreeGuidance(guidance_scale=W))


def sd3_modular():
    return _from_classic("stable_diffusion_3.modular_blocks_stable_diffusion_3.StableDiffusion3T2ICoreDenoiseStep",
                         tiny_sd3_pipeline, "transformer", "scheduler")


def qwen_modular():
    return _from_classic("qwenimage.modular_blocks_qwenimage.QwenImageCoreDenoiseStep", tiny_qwen_pipeline,
                         "transformer", "scheduler")


def _qwen_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    mask = (torch.arange(8) < 6).long()[None]
    return dict(prompt_embeds=_embeds(g, 1, 8, 16), prompt_embeds_mask=mask,
                negative_prompt_embeds=_embeds(g, 1, 8, 16), negative_prompt_embeds_mask=mask, height=32, width=32,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


def z_image_modular():
    return _from_classic("z_image.modular_blocks_z_image.ZImageCoreDenoiseStep", tiny_z_image_pipeline,
                         "transformer", "scheduler")


def _z_image_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    return dict(prompt_embeds=[_embeds(g, 6, 16)], negative_prompt_embeds=[_embeds(g, 6, 16)], height=32, width=32,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


def flux2_klein_base_modular():
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False,
    ).eval()
    return _modular(_blocks("flux2.modular_blocks_flux2_klein_base.Flux2KleinBaseCoreDenoiseStep"),
                    transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                    guider=ClassifierFreeGuidance(guidance_scale=W))


def _flux2_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    return dict(prompt_embeds=_embeds(g, 1, 8, 16), negative_prompt_embeds=_embeds(g, 1, 8, 16), height=32, width=32,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


def ltx_modular():
    return _from_classic("ltx.modular_blocks_ltx.LTXCoreDenoiseStep", tiny_ltx_pipeline, "transformer", "scheduler")


def _ltx_call(steps, seed):
    g = torch.Generator().manual_seed(100)
    return dict(prompt_embeds=_embeds(g, 1, 8, 32), negative_prompt_embeds=_embeds(g, 1, 8, 32),
                prompt_attention_mask=torch.ones(1, 8), negative_prompt_attention_mask=torch.ones(1, 8), height=32,
                width=32, num_frames=5, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


# name -> (builder, call arguments(steps, seed), the denoiser attribute(s))
CASES = {
    "HunyuanVideo15Pipeline": (hunyuan_video15, _hunyuan_video15_call, ("transformer",)),
    "HunyuanVideo15ImageToVideoPipeline": (hunyuan_video15_i2v, _hunyuan_video15_i2v_call, ("transformer",)),
    "MotifVideoPipeline": (motif_video, _motif_call, ("transformer",)),
    "MotifVideoImage2VideoPipeline": (motif_video_i2v, _motif_i2v_call, ("transformer",)),
    # glyph embeddings (prompt_embeds_2) are non-zero: the call runs on ocr_guider
    "HunyuanImagePipeline": (hunyuan_image, _hunyuan_image_call, ("transformer",)),
    "HunyuanImageRefinerPipeline": (hunyuan_image_refiner, _hunyuan_image_refiner_call, ("transformer",)),
    "StableDiffusionXLModularPipeline": (sdxl_modular, _pooled_call(64, 32, 32), ("unet",)),
    "WanModularPipeline": (wan_modular, _wan_call, ("transformer",)),
    "Wan22ModularPipeline": (wan22_modular, _wan_call, ("transformer", "transformer_2")),
    "StableDiffusion3ModularPipeline": (sd3_modular, _pooled_call(32, 64, 16), ("transformer",)),
    "QwenImageModularPipeline": (qwen_modular, _qwen_call, ("transformer",)),
    "ZImageModularPipeline": (z_image_modular, _z_image_call, ("transformer",)),
    # Flux2-Klein base blocks make a Flux2KleinModularPipeline; it slices its output before the guider
    "Flux2KleinModularPipeline": (flux2_klein_base_modular, _flux2_call, ("transformer",)),
    "LTXModularPipeline": (ltx_modular, _ltx_call, ("transformer",)),
}


def run(pipe, name, steps=4, seed=0, **kwargs):
    """The latents of one call of case `name`."""
    call = CASES[name][1](steps, seed) | kwargs
    if isinstance(pipe, ModularPipeline):
        return pipe(**call, output="latents")
    return pipe(**call, return_dict=False)[0]
