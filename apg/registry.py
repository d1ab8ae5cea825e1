"""The table of pipeline classes `apg.guide` supports, and how each runs classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["PipelineSpec", "register_pipeline", "spec_for", "BATCHES", "registered"]

BATCHES = ("uncond_first", "cond_first", "separate")


@dataclass(frozen=True)
class PipelineSpec:
    """How a pipeline class runs classifier-free guidance; see register_pipeline."""

    denoiser: str
    batch: str
    scale_arg: str = "guidance_scale"
    rescale_attr: str | None = None
    negative_prompt_arg: str | None = None
    steps_both_halves: bool = False
    denoiser_2: str | None = None
    scale_2_arg: str | None = None
    dynamic_scale_arg: str | None = None
    to_stepped: Callable | None = None
    refused_args: dict = field(default_factory=dict)


_REGISTRY: dict[type, PipelineSpec] = {}


def register_pipeline(
    pipeline_cls,
    *,
    denoiser: str,
    batch: str,
    scale_arg: str = "guidance_scale",
    rescale_attr: str | None = None,
    negative_prompt_arg: str | None = None,
    steps_both_halves: bool = False,
    denoiser_2: str | None = None,
    scale_2_arg: str | None = None,
    dynamic_scale_arg: str | None = None,
    to_stepped: Callable | None = None,
    refused_args: dict | None = None,
):
    """Declare a pipeline class that follows the standard CFG pattern, so `apg.guide` supports it.

    denoiser: attribute holding the model (`"unet"`, `"transformer"`); its output is `.sample` or `[0]`.
    batch: `"uncond_first"` (one pass on `[uncond, cond]`, SD-style), `"cond_first"` (one pass on
    `[cond, uncond]`, DiT-style) or `"separate"` (two passes per step, cond then uncond, Flux true CFG).
    scale_arg: the call argument that turns CFG on (`"guidance_scale"`; Flux: `"true_cfg_scale"`).
    rescale_attr: pipeline attribute holding `guidance_rescale` (Lin et al.), re-applied after guidance.
    negative_prompt_arg: the pipeline runs its uncond pass only with this argument; "" is passed if absent.
    steps_both_halves: the pipeline steps the latents of both halves together (DiT).
    denoiser_2: a second expert, hooked too where the pipeline holds one (Wan 2.2 `"transformer_2"`).
    scale_2_arg: call argument with the scale of the steps denoiser_2 evaluates (Wan 2.2 `"guidance_scale_2"`);
    it defaults to the guidance's scale; eta, r, beta and the momentum state carry across the switch.
    dynamic_scale_arg: call argument that turns on CogVideoX's dynamic scale (`"use_dynamic_cfg"`): at
    timestep t of n steps, w_t = 1 + w (1 - cos(pi ((n - t) / n) ** 5)) / 2, as the pipeline computes it.
    to_stepped: `f(pipe, output, model_output)` -> the part of a denoiser output the pipeline passes to
    scheduler.step, where that is not the output itself (LTX image-to-video: unpacked, frames 1:).
    refused_args: call argument -> reason: apg cannot reproduce the pipeline with it, so a value other than
    the stock default raises a ValueError.
    Only the first `sample.shape[1]` channels of each output are guided (learned-sigma channels are not).
    """
    if not isinstance(pipeline_cls, type):
        raise TypeError(f"pipeline_cls must be a pipeline class, got {pipeline_cls!r}")
    if batch not in BATCHES:
        raise ValueError(f"batch must be one of {BATCHES}, got {batch!r}")
    if not isinstance(denoiser, str) or not denoiser:
        raise TypeError(f"denoiser must be the name of the pipeline's denoiser attribute, got {denoiser!r}")
    if steps_both_halves and batch == "separate":
        raise ValueError("steps_both_halves=True needs one concatenated pass, not batch='separate'")
    if scale_2_arg is not None and denoiser_2 is None:
        raise ValueError(f"scale_2_arg={scale_2_arg!r} needs denoiser_2, the expert whose steps it scales")
    if to_stepped is not None and not callable(to_stepped):
        raise TypeError(f"to_stepped must be callable as f(pipe, output, model_output), got {to_stepped!r}")
    spec = PipelineSpec(denoiser, batch, scale_arg, rescale_attr, negative_prompt_arg, steps_both_halves,
                        denoiser_2, scale_2_arg, dynamic_scale_arg, to_stepped, dict(refused_args or {}))
    _REGISTRY[pipeline_cls] = spec
    return pipeline_cls


def registered() -> dict[type, PipelineSpec]:
    """A copy of the table: pipeline class -> spec."""
    return dict(_REGISTRY)


def spec_for(pipe) -> PipelineSpec:
    """The spec of `pipe`'s class (or its nearest registered base); ValueError naming the supported ones."""
    for cls in type(pipe).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    supported = sorted(cls.__name__ for cls in _REGISTRY)
    raise ValueError(
        f"pipeline {type(pipe).__name__} is not supported by apg; supported pipelines: {supported} "
        "(apg.register_pipeline declares another one that follows the standard CFG pattern)"
    )


def _ltx_i2v_stepped(pipe, output, model_output):
    """LTXImageToVideoPipeline unpacks [B, N, C] tokens to [B, C, F, H, W] and steps frames 1: only."""
    frames, height, width = model_output.shape[2:]  # frame 0, the image condition, is never stepped
    unpacked = pipe._unpack_latents(output, frames + 1, height, width, pipe.transformer_spatial_patch_size,
                                    pipe.transformer_temporal_patch_size)
    return unpacked[:, :, 1:]


_WAN = dict(denoiser="transformer", batch="separate", denoiser_2="transformer_2", scale_2_arg="guidance_scale_2")
_LTX_I2V_RESCALE = ("its stock rescale takes the std over the image-conditioned frame 0 too, which is not stepped "
                    "and so not guided")

# Stock Diffusers pipelines: class name -> register_pipeline keywords (read from each class's __call__).
STOCK_PIPELINES: dict[str, dict] = {
    "StableDiffusionPipeline": dict(denoiser="unet", batch="uncond_first", rescale_attr="guidance_rescale"),
    "StableDiffusionImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first"),
    "StableDiffusionXLPipeline": dict(denoiser="unet", batch="uncond_first", rescale_attr="guidance_rescale"),
    "StableDiffusionXLImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", rescale_attr="guidance_rescale"),
    "StableDiffusion3Pipeline": dict(denoiser="transformer", batch="uncond_first"),
    "PixArtSigmaPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "SanaPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "DiTPipeline": dict(denoiser="transformer", batch="cond_first", steps_both_halves=True),
    "FluxPipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                         negative_prompt_arg="negative_prompt"),
    "WanPipeline": _WAN,
    "WanImageToVideoPipeline": _WAN,
    "LTXPipeline": dict(denoiser="transformer", batch="uncond_first", rescale_attr="guidance_rescale"),
    "LTXImageToVideoPipeline": dict(denoiser="transformer", batch="uncond_first", to_stepped=_ltx_i2v_stepped,
                                    refused_args={"guidance_rescale": _LTX_I2V_RESCALE}),
    "CogVideoXPipeline": dict(denoiser="transformer", batch="uncond_first", dynamic_scale_arg="use_dynamic_cfg"),
    "HunyuanVideoPipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                                 negative_prompt_arg="negative_prompt"),
}


def _register_stock_pipelines():
    import diffusers

    for name, spec in STOCK_PIPELINES.items():
        register_pipeline(getattr(diffusers, name), **spec)


_register_stock_pipelines()
