"""The table of pipeline classes `apg.guide` supports, and how each runs classifier-free guidance."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import UnsupportedError

__all__ = ["PipelineSpec", "register_pipeline", "spec_for", "BATCHES", "registered", "ENTRIES", "REFUSED"]

BATCHES = ("uncond_first", "cond_first", "separate")
ENTRIES = "entries"  # batch_dims value: a list with one entry per sample (Z-Image)


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
    negated_output: bool = False
    renorm_to_cond: bool = False
    renorm_arg: str | None = None
    cfg_trunc_arg: str | None = None
    from_output: Callable | None = None
    batch_dims: dict = field(default_factory=dict)
    zero_output: Callable | None = None
    conditioners: tuple = ()


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
    negated_output: bool = False,
    renorm_to_cond: bool = False,
    renorm_arg: str | None = None,
    cfg_trunc_arg: str | None = None,
    from_output: Callable | None = None,
    batch_dims: dict | None = None,
    zero_output: Callable | None = None,
    conditioners: tuple = (),
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
    On packed tokens `[B, N, C]` that is the first N tokens: the image-context tokens that Flux Kontext and
    Qwen-Image-Edit append to the input are dropped, as those pipelines do.
    negated_output: the pipeline steps `-output` (HiDream, Lumina2); apg converts that one to x0, so the sign
    of b in x0 = a * sample + b * output is the scheduler's own.
    renorm_to_cond: after CFG the pipeline rescales the combined prediction to the cond prediction's norm
    over the last dim (Qwen-Image: per token; Lumina2: per row of the latents); apg does the same to the
    guided prediction, so APG's output is renormalised too, as stock.
    renorm_arg: the call argument that switches renorm_to_cond per call (Lumina2: `cfg_normalization`);
    its default in the pipeline's signature applies when it is not passed.
    cfg_trunc_arg: the call argument (Lumina2: `cfg_trunc_ratio`) past which, at steps with
    (i + 1) / steps > value, the pipeline runs no uncond pass: those steps step the cond prediction, as
    stock, and the guidance (with its momentum) sits them out.
    from_output: `f(pipe, output)` -> each captured denoiser output as one batched tensor, where it is not one
    (ZImage: a list of `[C, 1, H, W]` per sample, stacked and squeezed to `[B, C, H, W]` as the pipeline does).
    batch_dims: denoiser argument -> where its samples are, for the steps at which apg runs the denoiser on the
    cond half of a one-pass batch only (apg/_skip.py): an int (the batch dim: HiDream's llama embeddings, 1),
    None (not per-sample: rotary embeddings, position ids), or ENTRIES (a list with one entry per sample,
    Z-Image). Arguments not named are detected: every tensor, at any depth of dicts, lists and tuples, whose
    dim 0 is the batch of the denoiser's first argument is cut to the cond half; the rest passes as it is.
    zero_output: `f(denoiser, first_argument)` -> the output a denoiser call returns at a step whose result
    needs no model (CFG-Zero*'s zeroed steps), where zeros shaped like the first argument are not what the
    denoiser returns (more output channels: learned sigma; fewer: inpainting's and image-to-video's inputs).
    conditioners: attributes of modules the pipeline runs on the same `[uncond, cond]` batch before the denoiser,
    feeding it (`("controlnet",)`): where a step needs no uncond pass they run on the cond half too.

    Read the class's `__call__` first. It fits when, per `scheduler.step`, the denoiser runs once on the
    concatenated halves (or twice, cond then uncond), the pipeline combines them with the plain CFG line
    `uncond + scale * (cond - uncond)` (then at most the post-processing the options above reproduce), and
    steps an output shaped like the latents. Extra modules (a ControlNet, an image encoder) are fine: only `denoiser`'s output is captured.
    ControlNet img2img, for example, batches `[uncond, cond]` through `self.unet`:

        import apg
        from diffusers import StableDiffusionControlNetImg2ImgPipeline

        apg.register_pipeline(StableDiffusionControlNetImg2ImgPipeline, denoiser="unet", batch="uncond_first")
        apg.guide(pipe, apg.APG(7.5, norm_threshold=15.0))  # pipe: a loaded pipeline of that class

    A call that breaks the pattern at run time (another number of denoiser passes per step, a batch that
    does not split in two) raises a RuntimeError. Check parity: `apg.APG(scale, eta=1.0, momentum=0.0)` is CFG.
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
    if from_output is not None and not callable(from_output):
        raise TypeError(f"from_output must be callable as f(pipe, output), got {from_output!r}")
    if renorm_arg and not renorm_to_cond:
        raise ValueError(f"renorm_arg={renorm_arg!r} switches renorm_to_cond, which is False")
    if cfg_trunc_arg and batch != "separate":
        raise ValueError(f"cfg_trunc_arg={cfg_trunc_arg!r} needs batch='separate' (a step without its uncond pass)")
    for name, where in (batch_dims or {}).items():
        if not (where is None or where == ENTRIES or (isinstance(where, int) and not isinstance(where, bool))):
            raise ValueError(f"batch_dims[{name!r}] must be an int, None or {ENTRIES!r}, got {where!r}")
    if zero_output is not None and not callable(zero_output):
        raise TypeError(f"zero_output must be callable as f(denoiser, first_argument), got {zero_output!r}")
    spec = PipelineSpec(
        denoiser, batch, scale_arg=scale_arg, rescale_attr=rescale_attr, negative_prompt_arg=negative_prompt_arg,
        steps_both_halves=steps_both_halves, denoiser_2=denoiser_2, scale_2_arg=scale_2_arg,
        dynamic_scale_arg=dynamic_scale_arg, to_stepped=to_stepped, refused_args=dict(refused_args or {}),
        negated_output=negated_output, renorm_to_cond=renorm_to_cond, renorm_arg=renorm_arg,
        cfg_trunc_arg=cfg_trunc_arg, from_output=from_output, batch_dims=dict(batch_dims or {}),
        zero_output=zero_output, conditioners=tuple(conditioners),
    )
    _REGISTRY[pipeline_cls] = spec
    return pipeline_cls


def registered() -> dict[type, PipelineSpec]:
    """A copy of the table: pipeline class -> spec, with every stock class the installed Diffusers has."""
    import warnings

    import diffusers

    for name in _stock_names():
        with warnings.catch_warnings():
            # Kolors' text encoder module calls torch.jit.script at import; torch >= 2.9 warns about it.
            warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
            _stock_spec(getattr(diffusers, name))
    return dict(_REGISTRY)


def _stock_names() -> list[str]:
    """The STOCK_PIPELINES classes that the installed Diffusers has (none imported: its lazy module lists them)."""
    import diffusers

    return [name for name in STOCK_PIPELINES if name in dir(diffusers)]


def _stock_spec(cls) -> PipelineSpec | None:
    """The spec of a stock Diffusers class, registered on first use; None for any other class."""
    diffusers = sys.modules.get("diffusers")
    name = cls.__name__
    if name not in STOCK_PIPELINES or diffusers is None or getattr(diffusers, name, None) is not cls:
        return None
    if cls not in _REGISTRY:  # an explicit register_pipeline of the class wins
        register_pipeline(cls, **STOCK_PIPELINES[name])
    return _REGISTRY[cls]


def spec_for(pipe) -> PipelineSpec:
    """The spec of `pipe`'s class (or its nearest registered base); UnsupportedError naming the supported ones."""
    for cls in type(pipe).__mro__:
        spec = _REGISTRY.get(cls) or _stock_spec(cls)
        if spec is not None:
            return spec
    name = type(pipe).__name__
    why = next((REFUSED[cls.__name__] for cls in type(pipe).__mro__ if cls.__name__ in REFUSED), None)
    supported = sorted({cls.__name__ for cls in _REGISTRY} | set(_stock_names()))
    raise UnsupportedError(
        f"pipeline {name} is not supported by apg" + (f": {why}" if why else "") + f"; supported pipelines: "
        f"{supported} (apg.register_pipeline declares another one that follows the standard CFG pattern)"
    )


# Stock Diffusers classes with a CFG line that apg does not guide: class name -> why (scripts/census.py lists
# them all in docs/census.md). "not yet verified" names what the class's __call__ does, read from its source.
REFUSED: dict[str, str] = {
    "AllegroPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "AnimateDiffControlNetPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "AnimateDiffPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "AnimateDiffPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "AnimateDiffSDXLPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`; `guidance_rescale`, 2 "
        "combination expressions",
    "AnimateDiffSparseControlNetPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "AnimateDiffVideoToVideoControlNetPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "AnimateDiffVideoToVideoPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "AnyFlowFARPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "AnyFlowPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "AudioLDM2Pipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "BriaFibo2Pipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "BriaFiboEditPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "BriaFiboPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "BriaPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "ChromaImg2ImgPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "ChromaInpaintPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "ChronoEditPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "CogVideoXFunControlPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "CogVideoXImageToVideoPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "CogVideoXVideoToVideoPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "CogView3PlusPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "CogView4ControlPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "ConsisIDPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "Cosmos2TextToImagePipeline":
        "not yet verified: two passes, c + s(c - u) on `transformer`, scale `guidance_scale`",
    "Cosmos2VideoToWorldPipeline":
        "not yet verified: two passes, c + s(c - u) on `transformer`, scale `guidance_scale`",
    "Cosmos2_5_PredictBasePipeline":
        "not yet verified: two passes, c + s(c - u) on `transformer`, scale `guidance_scale`",
    "Cosmos2_5_TransferPipeline":
        "not yet verified: two passes, c + s(c - u) on `transformer`, scale `guidance_scale`; 4 combination "
        "expressions",
    "Cosmos3OmniPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`; 3 combination "
        "expressions",
    "CosmosTextToWorldPipeline":
        "not yet verified: [uncond, cond], c + s(c - u) on `transformer`, scale `guidance_scale`",
    "CosmosVideoToWorldPipeline":
        "not yet verified: [uncond, cond], c + s(c - u) on `transformer`, scale `guidance_scale`",
    "DreamLitePipeline":
        "three-way guidance with an image scale (`image_guidance_scale`, InstructPix2Pix style), not the two-way "
        "CFG line",
    "EasyAnimateControlPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`; "
        "`guidance_rescale`, 2 combination expressions",
    "EasyAnimateInpaintPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`; "
        "`guidance_rescale`, 2 combination expressions",
    "EasyAnimatePipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`; "
        "`guidance_rescale`, 2 combination expressions",
    "ErnieImagePipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "Flux2KleinInpaintPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`; CFG off on step-"
        "distilled checkpoints (`config.is_distilled`)",
    "Flux2KleinPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`; CFG off on step-"
        "distilled checkpoints (`config.is_distilled`)",
    "FluxControlNetPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "FluxInpaintPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "FluxKontextInpaintPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "GlmImagePipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "HeliosPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`; 3 combination "
        "expressions",
    "HeliosPyramidPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`; 4 combination "
        "expressions",
    "HunyuanDiTControlNetPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`; "
        "`guidance_rescale`, 2 combination expressions",
    "HunyuanDiTPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "HunyuanSkyreelsImageToVideoPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "HunyuanVideoFramepackPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "HunyuanVideoImageToVideoPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "IFImg2ImgPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "IFImg2ImgSuperResolutionPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "IFInpaintingPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "IFInpaintingSuperResolutionPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "IFPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "IFSuperResolutionPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "Ideogram4Pipeline":
        "not yet verified: two models, text tokens first, a negated output and a per-step scale schedule "
        "(`gw[i]`), written s c + (1 - s) u",
    "JoyImageEditPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "JoyImageEditPlusPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "Kandinsky3Img2ImgPipeline":
        "not yet verified: [uncond, cond] on `unet`, written (s + 1) c - s u (CFG at w = s + 1)",
    "Kandinsky3Pipeline": "not yet verified: [uncond, cond] on `unet`, written (s + 1) c - s u (CFG at w = s + 1)",
    "Kandinsky5I2IPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "Kandinsky5I2VPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "Kandinsky5T2IPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "Kandinsky6TI2VAPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "KandinskyImg2ImgPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyInpaintPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyPriorPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `prior`, scale `guidance_scale`",
    "KandinskyV22ControlnetImg2ImgPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyV22ControlnetPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyV22Img2ImgPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyV22InpaintPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyV22Pipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KandinskyV22PriorEmb2EmbPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `prior`, scale `guidance_scale`",
    "KandinskyV22PriorPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `prior`, scale `guidance_scale`",
    "KolorsImg2ImgPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "KolorsPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "Krea2Pipeline":
        "not yet verified: two passes, c + s(c - u) on `transformer`, scale `guidance_scale`; CFG off on step-"
        "distilled checkpoints (`config.is_distilled`)",
    "LDMTextToImagePipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "LTX2ConditionPipeline":
        "LTX-2: spatio-temporal (STG, `stg_scale`) and modality (`modality_scale`) guidance terms, and a separate"
        " audio scale, are added to the CFG line",
    "LTX2HDRPipeline":
        "LTX-2: spatio-temporal (STG, `stg_scale`) and modality (`modality_scale`) guidance terms, and a separate"
        " audio scale, are added to the CFG line",
    "LTX2ImageToVideoPipeline":
        "LTX-2: spatio-temporal (STG, `stg_scale`) and modality (`modality_scale`) guidance terms, and a separate"
        " audio scale, are added to the CFG line",
    "LTX2InContextPipeline":
        "LTX-2: spatio-temporal (STG, `stg_scale`) and modality (`modality_scale`) guidance terms, and a separate"
        " audio scale, are added to the CFG line",
    "LTX2Pipeline":
        "LTX-2: spatio-temporal (STG, `stg_scale`) and modality (`modality_scale`) guidance terms, and a separate"
        " audio scale, are added to the CFG line",
    "LTXConditionPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`; "
        "`guidance_rescale`, 5 combination expressions",
    "LTXI2VLongMultiPromptPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`; "
        "`guidance_rescale`, 2 combination expressions",
    "LattePipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "LongCatAudioDiTPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "LongCatImageEditPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "LongCatImagePipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "LucyEditPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "LuminaPipeline": "not yet verified: [cond, uncond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "MochiPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "NucleusMoEImagePipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "OmniGenPipeline":
        "three-way guidance, u + s_i (i - u) + s (c - i) (`img_guidance_scale`), not the two-way CFG line",
    "OvisImagePipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "PRXPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "PRXPixelPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "PixArtSigmaPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "QwenImage21Pipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "QwenImageControlNetInpaintPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "QwenImageControlNetPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "QwenImageEditInpaintPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "QwenImageEditPlusPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "QwenImageImg2ImgPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "QwenImageInpaintPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "QwenImageLayeredPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `true_cfg_scale`",
    "SanaControlNetPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "SanaImageToVideoPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "SanaPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "SanaVideoPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "SanaWMPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "ShapEImg2ImgPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `prior`, scale `guidance_scale`",
    "ShapEPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `prior`, scale `guidance_scale`",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "SkyReelsV2DiffusionForcingPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "SkyReelsV2ImageToVideoPipeline":
        "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "SkyReelsV2Pipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "StableAudio3Pipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "StableAudioPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "StableDiffusion3ControlNetInpaintingPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "StableDiffusion3ControlNetPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "StableDiffusion3InpaintPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`",
    "StableDiffusion3PAGImg2ImgPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusion3PAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionAdapterPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionControlNetImg2ImgPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionControlNetInpaintPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionControlNetPAGInpaintPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionControlNetPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionDepth2ImgPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionImageVariationPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionInstructPix2PixPipeline":
        "InstructPix2Pix: three-way guidance, u + s (c - i) + s_i (i - u) over three passes "
        "(`image_guidance_scale`), not the two-way CFG line",
    "StableDiffusionLatentUpscalePipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionPAGImg2ImgPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionPAGInpaintPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionUpscalePipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionXLAdapterPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`; `guidance_rescale`, 2 "
        "combination expressions",
    "StableDiffusionXLControlNetImg2ImgPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionXLControlNetInpaintPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`; `guidance_rescale`, 2 "
        "combination expressions",
    "StableDiffusionXLControlNetPAGImg2ImgPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionXLControlNetPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionXLControlNetUnionImg2ImgPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionXLControlNetUnionInpaintPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`; `guidance_rescale`, 2 "
        "combination expressions",
    "StableDiffusionXLControlNetUnionPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableDiffusionXLInstructPix2PixPipeline":
        "InstructPix2Pix: three-way guidance, u + s (c - i) + s_i (i - u) over three passes "
        "(`image_guidance_scale`), not the two-way CFG line",
    "StableDiffusionXLPAGImg2ImgPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionXLPAGInpaintPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionXLPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableUnCLIPImg2ImgPipeline": "not yet verified: [uncond, cond], u + s(c - u) on `unet`, scale `guidance_scale`",
    "StableUnCLIPPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `prior`, scale `guidance_scale`; 2 combination "
        "expressions",
    "StableVideoDiffusionPipeline":
        "per-frame guidance scales (`min_guidance_scale` to `max_guidance_scale`, one per frame), not one scale",
    "WanAnimatePipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "WanVACEPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "WanVideoToVideoPipeline": "not yet verified: two passes, u + s(c - u) on `transformer`, scale `guidance_scale`",
    "ZImageControlNetInpaintPipeline":
        "not yet verified: unclear, c + s(c - u) on `transformer`, scale `guidance_scale`",
    "ZImageControlNetPipeline": "not yet verified: unclear, c + s(c - u) on `transformer`, scale `guidance_scale`",
    "ZImageImg2ImgPipeline": "not yet verified: unclear, c + s(c - u) on `transformer`, scale `guidance_scale`",
    "ZImageInpaintPipeline": "not yet verified: unclear, c + s(c - u) on `transformer`, scale `guidance_scale`",
    "ZImageOmniPipeline": "not yet verified: unclear, c + s(c - u) on `transformer`, scale `guidance_scale`",
}


def _ltx_i2v_stepped(pipe, output, model_output):
    """LTXImageToVideoPipeline unpacks [B, N, C] tokens to [B, C, F, H, W] and steps frames 1: only."""
    frames, height, width = model_output.shape[2:]  # frame 0, the image condition, is never stepped
    unpacked = pipe._unpack_latents(output, frames + 1, height, width, pipe.transformer_spatial_patch_size,
                                    pipe.transformer_temporal_patch_size)
    return unpacked[:, :, 1:]


def _out_channels(denoiser, first):
    """Zeros [B, out_channels, ...] for a channel-first denoiser whose output channels are not its input's."""
    channels = getattr(denoiser, "out_channels", None) or denoiser.config.out_channels  # DiT-style: resolved
    return first.new_zeros((first.shape[0], channels, *first.shape[2:]))


# Image-to-video Wan feeds [latents, condition] channels (36) for 16 output ones.
_WAN = dict(denoiser="transformer", batch="separate", denoiser_2="transformer_2", scale_2_arg="guidance_scale_2",
            zero_output=_out_channels)
_LTX_I2V_RESCALE = ("its stock rescale takes the std over the image-conditioned frame 0 too, which is not stepped "
                    "and so not guided")


def _z_image_output(pipe, output):
    """ZImagePipeline's transformer returns a list of [C, 1, H, W] per sample; the pipeline stacks and squeezes."""
    return torch.stack(output).squeeze(2)


_Z_IMAGE_REFUSED = {
    "cfg_normalization": "it clips the combined prediction to the cond prediction's norm, not reproduced",
    "cfg_truncation": "it drops the uncond pass late in sampling, which the capture does not follow",
}

# Stock Diffusers pipelines: class name -> register_pipeline keywords (read from each class's __call__). Resolved by
# name when a pipeline of that class is guided: a class the installed Diffusers lacks is simply unsupported.
STOCK_PIPELINES: dict[str, dict] = {
    "StableDiffusionPipeline": dict(denoiser="unet", batch="uncond_first", rescale_attr="guidance_rescale"),
    "StableDiffusionImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first"),
    "StableDiffusionXLPipeline": dict(denoiser="unet", batch="uncond_first", rescale_attr="guidance_rescale"),
    "StableDiffusionXLImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", rescale_attr="guidance_rescale"),
    "StableDiffusion3Pipeline": dict(denoiser="transformer", batch="uncond_first"),
    "PixArtSigmaPipeline": dict(denoiser="transformer", batch="uncond_first", zero_output=_out_channels),
    "SanaPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "DiTPipeline": dict(denoiser="transformer", batch="cond_first", steps_both_halves=True, zero_output=_out_channels),
    "FluxPipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                         negative_prompt_arg="negative_prompt"),
    "WanPipeline": _WAN,
    "WanImageToVideoPipeline": _WAN,
    "LTXPipeline": dict(denoiser="transformer", batch="uncond_first", rescale_attr="guidance_rescale"),
    "LTXImageToVideoPipeline": dict(denoiser="transformer", batch="uncond_first", to_stepped=_ltx_i2v_stepped,
                                    refused_args={"guidance_rescale": _LTX_I2V_RESCALE}),
    "CogVideoXPipeline": dict(denoiser="transformer", batch="uncond_first", dynamic_scale_arg="use_dynamic_cfg",
                              batch_dims={"image_rotary_emb": None}),  # a (cos, sin) pair of [tokens, dim]
    "HunyuanVideoPipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                                 negative_prompt_arg="negative_prompt"),
    # Image pipelines with their own CFG post-processing (issue 11).
    "FluxImg2ImgPipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                                negative_prompt_arg="negative_prompt"),
    "FluxKontextPipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                                negative_prompt_arg="negative_prompt"),
    "ChromaPipeline": dict(denoiser="transformer", batch="separate"),
    "QwenImagePipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                              negative_prompt_arg="negative_prompt", renorm_to_cond=True),
    "QwenImageEditPipeline": dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                                  negative_prompt_arg="negative_prompt", renorm_to_cond=True),
    "HiDreamImagePipeline": dict(denoiser="transformer", batch="uncond_first", negated_output=True,
                                 batch_dims={"encoder_hidden_states_llama3": 1}),  # [llama layers, B, L, C]
    "Lumina2Pipeline": dict(denoiser="transformer", batch="separate", negated_output=True, renorm_to_cond=True,
                            renorm_arg="cfg_normalization", cfg_trunc_arg="cfg_trunc_ratio"),
    # ControlNet: the residuals come from pipe.controlnet, a second module; only the unet's output is captured.
    # guess_mode feeds the controlnet the cond half only (zero residuals for uncond): still one unet pass.
    "StableDiffusionControlNetPipeline": dict(denoiser="unet", batch="uncond_first", conditioners=("controlnet",)),
    "StableDiffusionXLControlNetPipeline": dict(denoiser="unet", batch="uncond_first", conditioners=("controlnet",)),
    # Inpaint: a 9-channel unet input (latents, mask, masked image) gives a 4-channel output, stepped on the
    # 4-channel latents; a 4-channel unet blends the known region back after each step.
    "StableDiffusionInpaintPipeline": dict(denoiser="unet", batch="uncond_first", zero_output=_out_channels),
    "StableDiffusionXLInpaintPipeline": dict(denoiser="unet", batch="uncond_first", rescale_attr="guidance_rescale",
                                             zero_output=_out_channels),
    "PixArtAlphaPipeline": dict(denoiser="transformer", batch="uncond_first", zero_output=_out_channels),
    "StableDiffusion3Img2ImgPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "KolorsPipeline": dict(denoiser="unet", batch="uncond_first"),
    "AuraFlowPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "HunyuanDiTPipeline": dict(denoiser="transformer", batch="uncond_first", rescale_attr="guidance_rescale",
                               # image_rotary_emb: a (cos, sin) pair of [tokens, dim]; learned-sigma output channels
                               batch_dims={"image_rotary_emb": None}, zero_output=_out_channels),
    "CogView4Pipeline": dict(denoiser="transformer", batch="separate"),
    # Channels-last video latents [B, T, H, W, C]; the default negative prompt makes the uncond pass always run.
    "Kandinsky5T2VPipeline": dict(denoiser="transformer", batch="separate"),
    # ZImage's rule pos + s (pos - neg) is CFG at w = s + 1: APG(w) stands for its guidance_scale = w - 1.
    "ZImagePipeline": dict(denoiser="transformer", batch="cond_first", negated_output=True,
                           from_output=_z_image_output, refused_args=_Z_IMAGE_REFUSED,
                           batch_dims={"x": ENTRIES, "cap_feats": ENTRIES}),
}
