"""Tiny cases for issue 17's family sd_more: more Stable Diffusion, SDXL, SD3, Kolors and HunyuanDiT classes
(ControlNet img2img and inpainting, adapters, upscalers, ...), built from tests/tiny_control.py and
tests/tiny_pipelines.py parts."""

from __future__ import annotations

import functools

import torch
from tiny_control import _SDXL_UNET, IMAGE, MASK, _controlnet, _inpaint_unet, _PROMPT
from tiny_pipelines import _no_bar, tiny_sd_pipeline, tiny_sdxl_pipeline
from tiny_registry import Case

import diffusers


def _case(build, steps_factor=1, **kwargs):
    """A Case calling the pipeline with `kwargs` (latents out); img2img strengths get `steps_factor` x the steps."""

    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(**{"output_type": "latent", **kwargs, **extra}, num_inference_steps=steps * steps_factor,
                   generator=torch.Generator().manual_seed(seed))
        return torch.as_tensor(out[0])

    return Case(build, run)


def _with(base, cls, **parts):
    """A builder of `cls` from `base()`'s components plus `parts`: name -> builder (a ControlNet, a UNet)."""
    return lambda: _no_bar(getattr(diffusers, cls)(**{**base().components,
                                                      **{name: part() for name, part in parts.items()}}))


def _union_controlnet():
    """A ControlNet Union for the tiny SDXL UNet: its control-type transformer is as wide as the first block."""
    torch.manual_seed(4)
    return diffusers.ControlNetUnionModel(
        block_out_channels=(4, 8), layers_per_block=1, in_channels=4, conditioning_embedding_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=64,
        projection_class_embeddings_input_dim=6 * 8 + 32, num_control_type=2, num_trans_channel=4, num_trans_head=1,
        num_proj_channel=4, **_SDXL_UNET,
    ).eval()


_sd_with = functools.partial(_with, tiny_sd_pipeline)
_sdxl_with = functools.partial(_with, tiny_sdxl_pipeline)
_sdxl_controlnet = functools.partial(_controlnet, sdxl=True)
_sdxl_inpaint_unet = functools.partial(_inpaint_unet, sdxl=True)
_sd_inpaint_unet = functools.partial(_inpaint_unet, sdxl=False)

_IMG2IMG = {"image": IMAGE, "strength": 0.5}  # half the steps run: steps_factor=2
_INPAINT = {"image": IMAGE, "mask_image": MASK}
_UNION = {"control_mode": 1}

CASES: dict[str, Case] = {
    "StableDiffusionControlNetImg2ImgPipeline": _case(
        _sd_with("StableDiffusionControlNetImg2ImgPipeline", controlnet=_controlnet), steps_factor=2,
        **_PROMPT, **_IMG2IMG, control_image=IMAGE),
    "StableDiffusionControlNetInpaintPipeline": _case(
        _sd_with("StableDiffusionControlNetInpaintPipeline", controlnet=_controlnet, unet=_sd_inpaint_unet),
        **_PROMPT, **_INPAINT, control_image=IMAGE),
    "StableDiffusionXLControlNetImg2ImgPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetImg2ImgPipeline", controlnet=_sdxl_controlnet), steps_factor=2,
        **_PROMPT, **_IMG2IMG, control_image=IMAGE),
    "StableDiffusionXLControlNetInpaintPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetInpaintPipeline", controlnet=_sdxl_controlnet,
                   unet=_sdxl_inpaint_unet), **_PROMPT, **_INPAINT, control_image=IMAGE),
    "StableDiffusionXLControlNetUnionPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetUnionPipeline", controlnet=_union_controlnet),
        **_PROMPT, **_UNION, control_image=IMAGE),
    "StableDiffusionXLControlNetUnionImg2ImgPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetUnionImg2ImgPipeline", controlnet=_union_controlnet), steps_factor=2,
        **_PROMPT, **_IMG2IMG, **_UNION, control_image=IMAGE),
    "StableDiffusionXLControlNetUnionInpaintPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetUnionInpaintPipeline", controlnet=_union_controlnet),  # 4 channels
        **_PROMPT, **_INPAINT, **_UNION, control_image=IMAGE),
}
