"""Tiny cases of the Qwen-Image family and its kin (LongCat, Ovis, GLM, Ernie, ...): issue 17, family qwen."""

from __future__ import annotations

import contextlib
import importlib
import unittest.mock

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


def _small_images(module):
    """Qwen-Image-Edit pipelines resize input images to a fixed area (~1024² px) whatever the call asks; keep them
    at 32x32 here (`module`: the pipeline's module under diffusers.pipelines)."""
    module = importlib.import_module(f"diffusers.pipelines.{module}")
    original = module.calculate_dimensions
    small = lambda area, ratio: original(32 * 32, ratio)  # noqa: E731
    return unittest.mock.patch.object(module, "calculate_dimensions", small)


def _run(call, steps_of=lambda steps: steps, module=None):
    """run(pipe, steps, seed, **extra) for a pipeline called with `call()`'s arguments, latents out; `module`:
    where to patch calculate_dimensions (see _small_images)."""

    def run(pipe, steps=3, seed=0, **extra):
        kwargs = {"output_type": "latent", **call(), **extra}
        with _small_images(module) if module else contextlib.nullcontext():
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
    "QwenImageEditPlusPipeline": Case(_qwen_build("QwenImageEditPlusPipeline", processor=None), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": [_image(32), _image(32)]},
        module="qwenimage.pipeline_qwenimage_edit_plus")),
    "QwenImageEditInpaintPipeline": Case(_qwen_build("QwenImageEditInpaintPipeline", processor=None), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": _image(32), "mask_image": _mask(), "strength": STRENGTH},
        _strength, module="qwenimage.pipeline_qwenimage_edit_inpaint")),
}
