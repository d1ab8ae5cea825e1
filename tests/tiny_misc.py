"""Tiny cases: (family module of tests/tiny_registry.py) misc: Z-Image variants, Cosmos 2, DeepFloyd IF, Stable Audio,
Kandinsky 3 and more. Each builder reuses the tiny parts of tiny_pipelines / tiny_control and seeds torch itself."""

from __future__ import annotations

import torch
from tiny_control import FAMILIES as CONTROL_FAMILIES
from tiny_control import IMAGE, MASK, tiny_z_image_pipeline
from tiny_registry import Case

import diffusers

CASES: dict = {}


def _generator(seed):
    return torch.Generator().manual_seed(seed)


# -- Z-Image variants: the ZImagePipeline parts (tiny_control), its VAE given the shift factor they encode with ------
def _z_image(cls_name, **extra):
    """A Z-Image variant built from tiny_z_image_pipeline's components (+ `extra` modules)."""
    base = tiny_z_image_pipeline()
    base.vae.register_to_config(shift_factor=0.0)  # image-conditioned variants subtract it when encoding
    pipe = getattr(diffusers, cls_name)(**base.components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _z_image_run(**inputs):
    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(**CONTROL_FAMILIES["z_image"][1], **inputs, output_type="latent", num_inference_steps=steps,
                   generator=_generator(seed), **extra)
        return torch.as_tensor(out[0])
    return run


CASES["ZImageImg2ImgPipeline"] = Case(lambda: _z_image("ZImageImg2ImgPipeline"),
                                      _z_image_run(image=IMAGE, strength=0.75))
CASES["ZImageInpaintPipeline"] = Case(lambda: _z_image("ZImageInpaintPipeline"),
                                      _z_image_run(image=IMAGE, mask_image=MASK, strength=0.75))
