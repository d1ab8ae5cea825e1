"""Tiny cases for issue 17's family sd_more: more Stable Diffusion, SDXL, SD3, Kolors and HunyuanDiT classes
(ControlNet img2img and inpainting, adapters, upscalers, ...), built from tests/tiny_control.py and
tests/tiny_pipelines.py parts."""

from __future__ import annotations

import torch
from tiny_control import IMAGE, MASK, _controlnet, _PROMPT
from tiny_pipelines import _no_bar, tiny_sd_pipeline
from tiny_registry import Case

import diffusers


def _case(build, steps_factor=1, **kwargs):
    """A Case calling the pipeline with `kwargs` (latents out); img2img strengths get `steps_factor` x the steps."""

    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(**{"output_type": "latent", **kwargs, **extra}, num_inference_steps=steps * steps_factor,
                   generator=torch.Generator().manual_seed(seed))
        return torch.as_tensor(out[0])

    return Case(build, run)


def _sd_with(cls, **parts):
    """`cls` from tiny SD's components plus `parts`: name -> builder (a ControlNet, an inpainting UNet)."""
    return lambda: _no_bar(getattr(diffusers, cls)(**tiny_sd_pipeline().components,
                                                   **{name: part() for name, part in parts.items()}))


_IMG2IMG = {"image": IMAGE, "strength": 0.5}  # half the steps: steps_factor=2

CASES: dict[str, Case] = {
    "StableDiffusionControlNetImg2ImgPipeline": _case(
        _sd_with("StableDiffusionControlNetImg2ImgPipeline", controlnet=_controlnet), steps_factor=2,
        **_PROMPT, **_IMG2IMG, control_image=IMAGE),
}
