"""Tiny cases for the classes apg guided before the census (tests/tiny_pipelines.py, tiny_image.py, tiny_video.py,
tiny_control.py build them; this module only names them for tests/tiny_registry.py)."""

from __future__ import annotations

import functools

import tiny_image
import tiny_pipelines
from tiny_registry import Case


def _case(module, families, family, call):
    build = families[family][0]
    return Case(build, lambda pipe, steps=3, seed=0, **extra: call(pipe, family, steps, seed, **extra))


_pipelines = functools.partial(_case, tiny_pipelines, tiny_pipelines.FAMILIES, call=tiny_pipelines.call)
_image = functools.partial(_case, tiny_image, tiny_image.IMAGE_FAMILIES, call=tiny_image.call_image)

CASES: dict[str, Case] = {
    "StableDiffusionPipeline": _pipelines("sd"),
    "FluxPipeline": _pipelines("flux"),
    "QwenImagePipeline": _image("qwen"),
}
