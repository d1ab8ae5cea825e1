"""Tiny cases of the Qwen-Image family and its kin (LongCat, Ovis, GLM, Ernie, ...): issue 17, family qwen."""

from __future__ import annotations

import torch
from tiny_image import _image, _qwen_call, _qwen_parts
from tiny_pipelines import _no_bar
from tiny_registry import Case

import diffusers

STRENGTH = 0.75  # img2img / inpaint: steps * 4 // 3 scheduled, 3 of them run


def _qwen_build(cls, **more):
    return lambda: _no_bar(getattr(diffusers, cls)(**_qwen_parts(), **more))


def _mask(size=32):
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0  # repaint the middle
    return mask


def _run(call, steps_of=lambda steps: steps):
    """run(pipe, steps, seed, **extra) for a pipeline called with `call()`'s arguments, latents out."""

    def run(pipe, steps=3, seed=0, **extra):
        kwargs = {"output_type": "latent", **call(), **extra}
        out = pipe(**kwargs, num_inference_steps=steps_of(steps), generator=torch.Generator().manual_seed(seed))
        return out[0]

    return run


def _strength(steps):
    return steps * 4 // 3


_QWEN_SIZE = dict(height=32, width=32)

CASES: dict[str, Case] = {
    "QwenImageImg2ImgPipeline": Case(_qwen_build("QwenImageImg2ImgPipeline"), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": _image(32), "strength": STRENGTH}, _strength)),
    "QwenImageInpaintPipeline": Case(_qwen_build("QwenImageInpaintPipeline"), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": _image(32), "mask_image": _mask(), "strength": STRENGTH},
        _strength)),
}
