"""One registry of tiny pipelines: stock class name -> how to build one and run it, for the tests, the benchmarks
and the census. Adding a class is one entry in a family module's CASES, gathered here.

A key is the class name, or "ClassName/variant" for a second case of one class (Wan 2.2's two experts).
`run(pipe, steps=3, seed=0, **extra)` calls the pipeline with a fresh seeded CPU generator and the case's own
arguments (prompt embeds, sizes, output_type="latent" where the class has it) plus `extra` (the scale argument,
`guidance=`), and returns the output as a tensor. It passes no scale argument of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Case:
    """A tiny pipeline of one class: random components built in code, and one seeded call."""

    build: Callable[[], Any]  # a fresh pipeline of the class, random weights, progress bar off
    run: Callable[..., torch.Tensor]  # run(pipe, steps=3, seed=0, **extra) -> output tensor


def _gather() -> dict[str, Case]:
    """Every family module's cases whose class the installed Diffusers has (an older one lacks the newest)."""
    import importlib

    import diffusers

    cases: dict[str, Case] = {}
    for module in _FAMILY_MODULES:
        for key, case in importlib.import_module(module).CASES.items():
            if key in cases:
                raise ValueError(f"tiny registry: {key!r} is in two family modules")
            if class_name(key) in dir(diffusers):
                cases[key] = case
    return cases


def class_name(key: str) -> str:
    """The pipeline class a registry key stands for."""
    return key.split("/")[0]


# Family modules, each with CASES: dict[str, Case].
_FAMILY_MODULES = ("tiny_cases_stock", "tiny_sd_more", "tiny_animate", "tiny_qwen", "tiny_flux", "tiny_video_more",
                   "tiny_misc", "tiny_extra", "tiny_frames")

TINY: dict[str, Case] = _gather()
