"""The table of pipeline classes `apg.guide` supports, and how each runs classifier-free guidance."""

from __future__ import annotations

import sys
from dataclasses import dataclass
import torch

from .errors import UnsupportedError
from .quirks import (ENTRIES, BatchDims, CondPlus, Conditioners, DynamicScale, Negated, Outputs, Quirk, Refuse,
                     RenormToCond, Rescale, SecondExpert, SteppedPart, StepsBothHalves, Truncation, ZeroOutput)
from . import quirks as _q  # the quirks of issue 17's families, named in their entries below

__all__ = ["PipelineSpec", "register_pipeline", "spec_for", "BATCHES", "registered", "REFUSED", "STOCK_PIPELINES"]

BATCHES = ("uncond_first", "cond_first", "separate")

# The keywords register_pipeline took before quirks: each is now the quirk named here.
_OLD_KEYWORDS = {
    "rescale_attr": "Rescale(attr)", "steps_both_halves": "StepsBothHalves()",
    "denoiser_2": "SecondExpert(denoiser, scale_arg)", "scale_2_arg": "SecondExpert(denoiser, scale_arg)",
    "dynamic_scale_arg": "DynamicScale(arg)", "to_stepped": "SteppedPart(part)", "refused_args": "Refuse(arg, reason)",
    "negated_output": "Negated()", "renorm_to_cond": "RenormToCond(arg)", "renorm_arg": "RenormToCond(arg)",
    "cfg_trunc_arg": "Truncation(arg)", "from_output": "Outputs(batched)", "batch_dims": "BatchDims(dims)",
    "zero_output": "ZeroOutput(zeros)", "conditioners": "Conditioners(*names)",
}


@dataclass(frozen=True)
class PipelineSpec:
    """How a pipeline class runs classifier-free guidance: the core pattern and its quirks (register_pipeline)."""

    denoiser: str
    batch: str
    scale_arg: str = "guidance_scale"
    negative_prompt_arg: str | None = None
    quirks: tuple = ()

    def quirk(self, kind):
        """The spec's quirk of type `kind`, or None."""
        return next((quirk for quirk in self.quirks if isinstance(quirk, kind)), None)

    def pipeline_scale(self, w):
        """The value of the pipeline's scale argument that means CFG weight w (its CFG line, not apg's)."""
        return w - 1 if self.quirk(CondPlus) else w

    def weight(self, scale):
        """The CFG weight w the pipeline's scale argument `scale` means; pipeline_scale's inverse."""
        return scale + 1 if self.quirk(CondPlus) else scale


_REGISTRY: dict[type, PipelineSpec] = {}


def register_pipeline(pipeline_cls, *, denoiser: str, batch: str, scale_arg: str = "guidance_scale",
                      negative_prompt_arg: str | None = None, quirks=(), **old):
    """Declare a pipeline class that runs classifier-free guidance in a pattern apg reproduces.

    The core: denoiser: attribute holding the model (`"unet"`, `"transformer"`); its output is `.sample` or `[0]`.
    batch: `"uncond_first"` (one pass on `[uncond, cond]`, SD-style), `"cond_first"` (one pass on
    `[cond, uncond]`, DiT-style) or `"separate"` (two passes per step, cond then uncond, Flux true CFG).
    scale_arg: the call argument that turns CFG on (`"guidance_scale"`; Flux: `"true_cfg_scale"`).
    negative_prompt_arg: the pipeline runs its uncond pass only with this argument; "" is passed if absent.
    quirks: what the class does beyond the plain line `uncond + scale * (cond - uncond)`, one object per
    departure, from apg.quirks (`Rescale("guidance_rescale")`, `Negated()`, `SecondExpert("transformer_2")`, ...).
    Only the first `sample.shape[1]` channels of each output are guided (learned-sigma channels are not).
    On packed tokens `[B, N, C]` that is the first N tokens: the image-context tokens that Flux Kontext and
    Qwen-Image-Edit append to the input are dropped, as those pipelines do.

    A class that follows a known pattern is one line: its core and its quirks, read from its `__call__`.
    Nothing is inferred from the signature: the batch order, the scale's meaning and the post-processing are
    not visible there. Instead every guided call checks the declaration: at the first step where both passes
    ran, what the pipeline hands `scheduler.step` must be the registered combination of the captured outputs
    at the scale apg gave the pipeline (the plain CFG line, then the quirks), or the call raises a RuntimeError
    naming the class and what differed before that step is taken (apg/_verify.py). A call that breaks the
    pattern later (another number of denoiser passes per step, a batch that does not split in two) raises too.

    ControlNet img2img, for example, batches `[uncond, cond]` through `self.unet`:

        import apg
        from diffusers import StableDiffusionControlNetImg2ImgPipeline

        apg.register_pipeline(StableDiffusionControlNetImg2ImgPipeline, denoiser="unet", batch="uncond_first",
                              quirks=(apg.quirks.Conditioners("controlnet"),))
        apg.guide(pipe, apg.APG(7.5, norm_threshold=15.0))  # pipe: a loaded pipeline of that class
    """
    if old:
        name = next(iter(old))
        raise TypeError(f"register_pipeline got {name}=; it is now a quirk: quirks=(apg.quirks."
                        f"{_OLD_KEYWORDS.get(name, '...')},)" if name in _OLD_KEYWORDS else
                        f"register_pipeline got an unexpected keyword argument {name!r}")
    if not isinstance(pipeline_cls, type):
        raise TypeError(f"pipeline_cls must be a pipeline class, got {pipeline_cls!r}")
    if batch not in BATCHES:
        raise ValueError(f"batch must be one of {BATCHES}, got {batch!r}")
    if not isinstance(denoiser, str) or not denoiser:
        raise TypeError(f"denoiser must be the name of the pipeline's denoiser attribute, got {denoiser!r}")
    quirks = tuple(quirks)
    for quirk in quirks:
        if not isinstance(quirk, Quirk):
            raise TypeError(f"quirks must be apg.quirks objects, got {quirk!r}")
    if any(isinstance(quirk, StepsBothHalves) for quirk in quirks) and batch == "separate":
        raise ValueError("StepsBothHalves() needs one concatenated pass, not batch='separate'")
    if any(isinstance(quirk, Truncation) for quirk in quirks) and batch != "separate":
        raise ValueError("Truncation() needs batch='separate' (a step without its uncond pass)")
    _REGISTRY[pipeline_cls] = PipelineSpec(denoiser, batch, scale_arg, negative_prompt_arg, quirks)
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
    "KolorsPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "Krea2Pipeline":
        "not yet verified: two passes, c + s(c - u) on `transformer`, scale `guidance_scale`; CFG off on step-"
        "distilled checkpoints (`config.is_distilled`)",
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
    "StableDiffusion3PAGImg2ImgPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusion3PAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionControlNetPAGInpaintPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionControlNetPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionInstructPix2PixPipeline":
        "InstructPix2Pix: three-way guidance, u + s (c - i) + s_i (i - u) over three passes "
        "(`image_guidance_scale`), not the two-way CFG line",
    "StableDiffusionLatentUpscalePipeline":
        "its CFG line combines c_skip x + c_out F(x), preconditioned outside the UNet from the noisy input (the "
        "UNet's last channel dropped, its timestep log(sigma) / 4), which the captured UNet output does not give apg",
    "StableDiffusionPAGImg2ImgPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionPAGInpaintPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionXLControlNetPAGImg2ImgPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "StableDiffusionXLControlNetPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
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
    channels = vars(denoiser).get("out_channels") or denoiser.config.out_channels  # DiT-style: resolved
    return first.new_zeros((first.shape[0], channels, *first.shape[2:]))


# Image-to-video Wan feeds [latents, condition] channels (36) for 16 output ones.
_WAN = dict(denoiser="transformer", batch="separate", quirks=(SecondExpert("transformer_2", "guidance_scale_2"),
                                                             ZeroOutput(_out_channels)))
_LTX_I2V_RESCALE = ("its stock rescale takes the std over the image-conditioned frame 0 too, which is not stepped "
                    "and so not guided")


def _z_image_output(pipe, output):
    """ZImagePipeline's transformer returns a list of [C, 1, H, W] per sample; the pipeline stacks and squeezes."""
    return torch.stack(output).squeeze(2)


_Z_IMAGE_REFUSED = (
    Refuse("cfg_normalization", "it clips the combined prediction to the cond prediction's norm, not reproduced"),
    Refuse("cfg_truncation", "it drops the uncond pass late in sampling, which the capture does not follow"),
)
_RESCALE = (Rescale("guidance_rescale"),)
_CONTROLNET = (Conditioners("controlnet"),)
_LEARNED_SIGMA = (ZeroOutput(_out_channels),)
_TRUE_CFG = dict(batch="separate", scale_arg="true_cfg_scale", negative_prompt_arg="negative_prompt")

# Stock Diffusers pipelines: class name -> register_pipeline keywords (read from each class's __call__). Resolved by
# name when a pipeline of that class is guided: a class the installed Diffusers lacks is simply unsupported.
STOCK_PIPELINES: dict[str, dict] = {
    "StableDiffusionPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_RESCALE),
    "StableDiffusionImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first"),
    "StableDiffusionXLPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_RESCALE),
    "StableDiffusionXLImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_RESCALE),
    "StableDiffusion3Pipeline": dict(denoiser="transformer", batch="uncond_first"),
    "PixArtSigmaPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "SanaPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "DiTPipeline": dict(denoiser="transformer", batch="cond_first", quirks=(StepsBothHalves(), *_LEARNED_SIGMA)),
    "FluxPipeline": dict(denoiser="transformer", **_TRUE_CFG),
    "WanPipeline": _WAN,
    "WanImageToVideoPipeline": _WAN,
    "LTXPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_RESCALE),
    "LTXImageToVideoPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        SteppedPart(_ltx_i2v_stepped), Refuse("guidance_rescale", _LTX_I2V_RESCALE))),
    "CogVideoXPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        DynamicScale("use_dynamic_cfg"), BatchDims({"image_rotary_emb": None}))),  # a (cos, sin) pair of [tokens, dim]
    "HunyuanVideoPipeline": dict(denoiser="transformer", **_TRUE_CFG),
    # Image pipelines with their own CFG post-processing (issue 11).
    "FluxImg2ImgPipeline": dict(denoiser="transformer", **_TRUE_CFG),
    "FluxKontextPipeline": dict(denoiser="transformer", **_TRUE_CFG),
    "ChromaPipeline": dict(denoiser="transformer", batch="separate"),
    "QwenImagePipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    "QwenImageEditPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    "HiDreamImagePipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        Negated(), BatchDims({"encoder_hidden_states_llama3": 1}))),  # [llama layers, B, L, C]
    "Lumina2Pipeline": dict(denoiser="transformer", batch="separate", quirks=(
        Negated(), RenormToCond("cfg_normalization"), Truncation("cfg_trunc_ratio"))),
    # ControlNet: the residuals come from pipe.controlnet, a second module; only the unet's output is captured.
    # guess_mode feeds the controlnet the cond half only (zero residuals for uncond): still one unet pass.
    "StableDiffusionControlNetPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_CONTROLNET),
    "StableDiffusionXLControlNetPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_CONTROLNET),
    # Inpaint: a 9-channel unet input (latents, mask, masked image) gives a 4-channel output, stepped on the
    # 4-channel latents; a 4-channel unet blends the known region back after each step.
    "StableDiffusionInpaintPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "StableDiffusionXLInpaintPipeline": dict(denoiser="unet", batch="uncond_first", quirks=(*_RESCALE,
                                                                                             *_LEARNED_SIGMA)),
    "PixArtAlphaPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "StableDiffusion3Img2ImgPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "KolorsPipeline": dict(denoiser="unet", batch="uncond_first"),
    "AuraFlowPipeline": dict(denoiser="transformer", batch="uncond_first"),
    # image_rotary_emb: a (cos, sin) pair of [tokens, dim]; learned-sigma output channels
    "HunyuanDiTPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        *_RESCALE, BatchDims({"image_rotary_emb": None}), *_LEARNED_SIGMA)),
    "CogView4Pipeline": dict(denoiser="transformer", batch="separate"),
    # Channels-last video latents [B, T, H, W, C]; the default negative prompt makes the uncond pass always run.
    "Kandinsky5T2VPipeline": dict(denoiser="transformer", batch="separate"),
    # ZImage's rule pos + s (pos - neg) is CFG at w = s + 1: APG(w) stands for its guidance_scale = w - 1.
    "ZImagePipeline": dict(denoiser="transformer", batch="cond_first", quirks=(
        Outputs(_z_image_output), Negated(), CondPlus(), *_Z_IMAGE_REFUSED,
        BatchDims({"x": ENTRIES, "cap_feats": ENTRIES}))),
    # Issue 17: the rest of Diffusers' CFG classes, by family (each verified by tests/tiny_<family>.py).
    # -- family sd_more --
    "StableDiffusionControlNetImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_CONTROLNET),
    "StableDiffusionControlNetInpaintPipeline":
        dict(denoiser="unet", batch="uncond_first", quirks=(*_CONTROLNET, *_LEARNED_SIGMA)),
    "StableDiffusionXLControlNetImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_CONTROLNET),
    "StableDiffusionXLControlNetInpaintPipeline":
        dict(denoiser="unet", batch="uncond_first", quirks=(*_CONTROLNET, _q.RescaleArg("guidance_rescale"),
                                                            *_LEARNED_SIGMA)),
    "StableDiffusionXLControlNetUnionPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_CONTROLNET),
    "StableDiffusionXLControlNetUnionImg2ImgPipeline":
        dict(denoiser="unet", batch="uncond_first", quirks=_CONTROLNET),
    # a 4-channel UNet only: the known region is blended back after each step
    "StableDiffusionXLControlNetUnionInpaintPipeline":
        dict(denoiser="unet", batch="uncond_first", quirks=(*_CONTROLNET, _q.RescaleArg("guidance_rescale"))),
    "KolorsImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first"),
    "StableDiffusion3ControlNetPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_CONTROLNET),
    "StableDiffusion3ControlNetInpaintingPipeline":
        dict(denoiser="transformer", batch="uncond_first", quirks=_CONTROLNET),
    "StableDiffusion3InpaintPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "StableDiffusionAdapterPipeline": dict(denoiser="unet", batch="uncond_first"),
    "StableDiffusionXLAdapterPipeline":
        dict(denoiser="unet", batch="uncond_first", quirks=(_q.RescaleArg("guidance_rescale"),)),
    "StableDiffusionDepth2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "StableDiffusionImageVariationPipeline": dict(denoiser="unet", batch="uncond_first"),
    "StableDiffusionUpscalePipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "StableUnCLIPImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first"),
    "LDMTextToImagePipeline": dict(denoiser="unet", batch="uncond_first"),
    "HunyuanDiTControlNetPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        *_RESCALE, *_CONTROLNET, BatchDims({"image_rotary_emb": None}), *_LEARNED_SIGMA)),
    # -- end of family sd_more --
    # -- family animate --
    # -- end of family animate --
    # -- family qwen --
    # -- end of family qwen --
    # -- family flux --
    # -- end of family flux --
    # -- family video_more --
    # -- end of family video_more --
    # -- family misc --
    # -- end of family misc --
}
