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

    A subclass of a supported class inherits its entry. One whose `__call__` you rewrote, still batching
    `[uncond, cond]` through `self.unet` with a ControlNet in front, is declared as:

        import apg
        from diffusers import StableDiffusionControlNetImg2ImgPipeline

        class MyControlNetImg2Img(StableDiffusionControlNetImg2ImgPipeline):
            ...  # your own __call__

        apg.register_pipeline(MyControlNetImg2Img, denoiser="unet", batch="uncond_first",
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
    "AnimateDiffPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "AnyFlowFARPipeline":
        "autoregressive chunks, each restarting FlowMapEulerDiscreteScheduler (a mean-velocity flow map), a scheduler"
        " apg reads no x0 from",
    "AnyFlowPipeline":
        "it steps a mean velocity from t to the next step's r with FlowMapEulerDiscreteScheduler, a scheduler apg "
        "reads no x0 from",
    "ConsisIDPipeline":
        "not yet verified: [uncond, cond], u + s(c - u) on `transformer`, scale `guidance_scale`; its module needs "
        "OpenCV (cv2), which apg's test environment does not install",
    "Cosmos2VideoToWorldPipeline":
        "it replaces the x0 of its conditioning frames by their clean latents, which it makes inside the call: from "
        "the transformer's outputs and the latents stepped, apg cannot rebuild what it steps",
    "Cosmos2_5_TransferPipeline":
        "autoregressive chunks, each restarting the scheduler, whose conditioning frames step their known velocity in"
        " both halves: not reproduced",
    "Cosmos3OmniPipeline":
        "its transformer returns per-modality lists (vision, sound, action), each masked and stepped by its own "
        "scheduler, which apg does not capture",
    "CosmosTextToWorldPipeline":
        "it calls scheduler.step twice per step (the x0 of both halves, then the combined x0 as "
        "pred_original_sample), which apg's step capture does not follow",
    "CosmosVideoToWorldPipeline":
        "it calls scheduler.step twice per step (the x0 of both halves, then the combined x0 as "
        "pred_original_sample), which apg's step capture does not follow",
    "DreamLitePipeline":
        "three-way guidance with an image scale (`image_guidance_scale`, InstructPix2Pix style), not the two-way "
        "CFG line",
    "EasyAnimateControlPipeline":
        "its __call__ fails in this Diffusers (it passes encode_prompt an unknown `text_encoder_index`), so no "
        "call can be verified",
    "HeliosPipeline": "its HeliosScheduler (chunked sampling over a latent history) is not a scheduler apg supports",
    "HeliosPyramidPipeline":
        "its HeliosScheduler or HeliosDMDScheduler (pyramid stages, CFG-Zero* at the first steps) is not a scheduler "
        "apg supports",
    "HunyuanDiTPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "Ideogram4Pipeline":
        "two models (the cond pass on `transformer` with the text tokens first, the uncond pass on a text-free "
        "`unconditional_transformer`) and a per-step weight schedule by default: not reproduced cleanly",
    "Kandinsky6TI2VAPipeline":
        "one CFG line over a (video, audio) output pair; the audio is stepped by a copy of the scheduler made inside "
        "the call, which apg's one guided output per step does not cover",
    "KandinskyPriorPipeline": "its UnCLIPScheduler is not a scheduler apg supports",
    "KandinskyV22PriorEmb2EmbPipeline": "its UnCLIPScheduler is not a scheduler apg supports",
    "KandinskyV22PriorPipeline": "its UnCLIPScheduler is not a scheduler apg supports",
    "KolorsPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
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
    "LTXI2VLongMultiPromptPipeline":
        "denoises each temporal window from freshly reset timesteps (one call's momentum and step count would run "
        "across windows), its hard-conditioned tokens at timestep 0 but stepped at the window's sigma",
    "LuminaPipeline":
        "it guides only the first three latent channels and steps the cond prediction's fourth, which apg's guidance "
        "of the whole output does not reproduce",
    "OmniGenPipeline":
        "three-way guidance, u + s_i (i - u) + s (c - i) (`img_guidance_scale`), not the two-way CFG line",
    "PixArtSigmaPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "SanaPAGPipeline":
        "PAG: a perturbed-attention guidance term (`pag_scale`, a third pass on perturbed attention) is added to "
        "the CFG line",
    "SanaWMPipeline":
        "steps the negated output as tokens with per-token timesteps, the first frame pinned at sigma 0 and kept "
        "aside; apg's x0 reads one sigma per step, so that frame would be guided at the wrong noise level",
    "ShapEImg2ImgPipeline":
        "its prior returns `predicted_image_embedding` (no `.sample`) with a variance half split off the last dim, "
        "which apg does not capture",
    "ShapEPipeline":
        "its prior returns `predicted_image_embedding` (no `.sample`) with a variance half split off the last dim, "
        "which apg does not capture",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline":
        "diffusion forcing: each latent frame is stepped by its own copy of the scheduler at its own timestep (one "
        "guided pass, then one scheduler.step per updated frame), which apg's per-step capture does not follow",
    "SkyReelsV2DiffusionForcingPipeline":
        "diffusion forcing: each latent frame is stepped by its own copy of the scheduler at its own timestep (one "
        "guided pass, then one scheduler.step per updated frame), which apg's per-step capture does not follow",
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline":
        "diffusion forcing: each latent frame is stepped by its own copy of the scheduler at its own timestep (one "
        "guided pass, then one scheduler.step per updated frame), which apg's per-step capture does not follow",
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
    "StableVideoDiffusionPipeline":
        "per-frame guidance scales (`min_guidance_scale` to `max_guidance_scale`, one per frame), not one scale",
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
    "AnimateDiffPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_q.ANIMATEDIFF),
    "AnimateDiffSDXLPipeline": dict(denoiser="unet", batch="uncond_first", quirks=(*_RESCALE, *_q.ANIMATEDIFF)),
    "AnimateDiffControlNetPipeline": dict(denoiser="unet", batch="uncond_first", quirks=(
        *_CONTROLNET, *_q.ANIMATEDIFF)),
    "AnimateDiffSparseControlNetPipeline": dict(denoiser="unet", batch="uncond_first", quirks=(
        *_CONTROLNET, *_q.ANIMATEDIFF)),
    "AnimateDiffVideoToVideoPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_q.ANIMATEDIFF),
    "AnimateDiffVideoToVideoControlNetPipeline": dict(denoiser="unet", batch="uncond_first", quirks=(
        *_CONTROLNET, *_q.ANIMATEDIFF)),
    # image_rotary_emb: ((cos, sin) per axis, positions per axis), none of them per sample
    "AllegroPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        BatchDims({"image_rotary_emb": None}),)),
    "LattePipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "CogVideoXImageToVideoPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        DynamicScale("use_dynamic_cfg"), _q.COGVIDEOX_ROTARY, _q.COGVIDEOX_CONDITIONED)),
    "CogVideoXVideoToVideoPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        _q.DynamicScaleAfterStrength("use_dynamic_cfg"), _q.COGVIDEOX_ROTARY)),
    "CogVideoXFunControlPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        DynamicScale("use_dynamic_cfg"), _q.COGVIDEOX_ROTARY, _q.COGVIDEOX_CONDITIONED)),
    "LTXConditionPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        *_RESCALE, _q.NegatedStep(), *(Refuse(arg, _q.LTX_CONDITIONED) for arg in ("conditions", "image", "video")))),
    # Learned-sigma checkpoints: the pipeline drops the output channels beyond the latents' before its CFG line.
    "EasyAnimatePipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(*_RESCALE, *_LEARNED_SIGMA)),
    "EasyAnimateInpaintPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        *_RESCALE, *_LEARNED_SIGMA)),
    # -- end of family animate --
    # -- family qwen --
    "QwenImageImg2ImgPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    "QwenImageInpaintPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    "QwenImageEditPlusPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    "QwenImageEditInpaintPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    # The ControlNet runs once per step on the cond inputs; both passes share its residuals: nothing to cut.
    "QwenImageControlNetPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    "QwenImageControlNetInpaintPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond(),)),
    "QwenImageLayeredPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(RenormToCond("cfg_normalize"),)),
    "QwenImage21Pipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(
        SteppedPart(_q.target_tokens), _q.FirstStepCache("use_kv_cache", "causal_condition"))),
    "LongCatImagePipeline": dict(denoiser="transformer", batch="separate", quirks=(
        _q.ClampedRenormToCond("enable_cfg_renorm", "cfg_renorm_min"),)),
    "LongCatImageEditPipeline": dict(denoiser="transformer", batch="separate"),
    "OvisImagePipeline": dict(denoiser="transformer", batch="separate"),
    "GlmImagePipeline": dict(denoiser="transformer", batch="separate", quirks=(Refuse("image", _q.GLM_IMAGE),)),
    "ErnieImagePipeline": dict(denoiser="transformer", batch="uncond_first"),
    "NucleusMoEImagePipeline": dict(denoiser="transformer", batch="separate", quirks=(Negated(), RenormToCond())),
    "JoyImageEditPipeline": dict(denoiser="transformer", batch="separate", quirks=(
        _q.RenormToCondOver(2, 1e-6), Refuse("image", _q.JOY_IMAGE))),
    # shape_list: one (t, h, w) list per sample
    "JoyImageEditPlusPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        _q.RenormToCondOver(2, 1e-6), Refuse("images", _q.JOY_IMAGE), BatchDims({"shape_list": ENTRIES}))),
    # -- end of family qwen --
    # -- family flux --
    "FluxInpaintPipeline": dict(denoiser="transformer", **_TRUE_CFG),
    "FluxControlNetPipeline": dict(denoiser="transformer", **_TRUE_CFG),  # its ControlNet runs once, on cond
    "FluxKontextInpaintPipeline": dict(denoiser="transformer", **_TRUE_CFG),
    "ChromaImg2ImgPipeline": dict(denoiser="transformer", batch="separate"),
    "ChromaInpaintPipeline": dict(denoiser="transformer", batch="separate"),  # its `true_cfg_scale` is unused
    # CFG off on step-distilled checkpoints: refused there
    "Flux2KleinPipeline": dict(denoiser="transformer", batch="separate", quirks=(_q.StepDistilled(),)),
    "Flux2KleinInpaintPipeline": dict(denoiser="transformer", batch="separate", quirks=(_q.StepDistilled(),)),
    # c + s (c - u) whenever s > 0; `is_distilled` only fixes the time shift, CFG stays on
    "Krea2Pipeline": dict(denoiser="transformer", batch="separate", quirks=(CondPlus(),)),
    "BriaPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(_q.NormalizeStd("normalize"),
                                                                              _q.Clip("clip_value"))),
    "BriaFiboPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "BriaFiboEditPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "BriaFibo2Pipeline": dict(denoiser="transformer", batch="separate"),
    # [latents, control latents] in, latents out
    "CogView4ControlPipeline": dict(denoiser="transformer", batch="separate", quirks=_LEARNED_SIGMA),
    "CogView3PlusPipeline": dict(denoiser="transformer", batch="uncond_first"),
    # -- end of family flux --
    # -- family video_more --
    "WanVACEPipeline": _WAN,  # control video through the vace blocks; 16 latent channels in and out
    "WanVideoToVideoPipeline": dict(denoiser="transformer", batch="separate"),
    "SkyReelsV2Pipeline": dict(denoiser="transformer", batch="separate"),
    # [latents, frame mask, encoded image] in (36 channels), 16 out
    "SkyReelsV2ImageToVideoPipeline": dict(denoiser="transformer", batch="separate", quirks=_LEARNED_SIGMA),
    "ChronoEditPipeline": dict(denoiser="transformer", batch="separate", quirks=(
        *_LEARNED_SIGMA, Refuse("enable_temporal_reasoning", _q._CHRONO_REASONING))),  # 36 channels in, 16 out
    # Channels-last latents [B, T, H, W, C]; the image ones step the latent channels of [latents, condition, mask].
    "Kandinsky5T2IPipeline": dict(denoiser="transformer", batch="separate"),
    "Kandinsky5I2IPipeline": dict(denoiser="transformer", batch="separate", quirks=(
        ZeroOutput(_q.kandinsky5_zeros),)),
    "Kandinsky5I2VPipeline": dict(denoiser="transformer", batch="separate", quirks=(
        SteppedPart(_q.kandinsky5_i2v_stepped), ZeroOutput(_q.kandinsky5_zeros))),
    "HunyuanVideoImageToVideoPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(
        SteppedPart(_q.hunyuan_i2v_stepped), *_LEARNED_SIGMA)),  # latent_concat: [latents, image, mask] in
    "SanaControlNetPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_CONTROLNET),
    "SanaVideoPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "SanaImageToVideoPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        SteppedPart(_q.sana_i2v_stepped), *_LEARNED_SIGMA)),
    "HunyuanSkyreelsImageToVideoPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=_LEARNED_SIGMA),
    "LucyEditPipeline": _WAN,  # [latents, encoded video] in; Wan 2.2's second expert
    "WanAnimatePipeline": dict(denoiser="transformer", batch="separate", quirks=(
        *_LEARNED_SIGMA, _q.OneSegment(_q.wan_animate_segments))),  # 36 channels in, 16 out
    "HunyuanVideoFramepackPipeline": dict(denoiser="transformer", **_TRUE_CFG, quirks=(
        _q.OneSegment(_q.framepack_sections),)),
    # -- end of family video_more --
    # -- family misc --
    # Z-Image variants: ZImagePipeline's loop (img2img strength; inpaint blends the known region after each step).
    "ZImageImg2ImgPipeline": dict(denoiser="transformer", batch="cond_first", quirks=(
        Outputs(_z_image_output), Negated(), CondPlus(), *_Z_IMAGE_REFUSED,
        BatchDims({"x": ENTRIES, "cap_feats": ENTRIES}))),
    "ZImageInpaintPipeline": dict(denoiser="transformer", batch="cond_first", quirks=(
        Outputs(_z_image_output), Negated(), CondPlus(), *_Z_IMAGE_REFUSED,
        BatchDims({"x": ENTRIES, "cap_feats": ENTRIES}))),
    # The ControlNet runs on the same list batch first (its control image [2B, C, 1, H, W] along dim 0).
    "ZImageControlNetPipeline": dict(denoiser="transformer", batch="cond_first", quirks=(
        Outputs(_z_image_output), Negated(), CondPlus(), *_Z_IMAGE_REFUSED, *_CONTROLNET,
        BatchDims({"x": ENTRIES, "cap_feats": ENTRIES}))),
    "ZImageControlNetInpaintPipeline": dict(denoiser="transformer", batch="cond_first", quirks=(
        Outputs(_z_image_output), Negated(), CondPlus(), *_Z_IMAGE_REFUSED, *_CONTROLNET,
        BatchDims({"x": ENTRIES, "cap_feats": ENTRIES}))),
    # Omni: each sample a list of [condition images..., target]; only the target comes back.
    "ZImageOmniPipeline": dict(denoiser="transformer", batch="cond_first", quirks=(
        Outputs(_z_image_output), Negated(), CondPlus(), *_Z_IMAGE_REFUSED,
        BatchDims({"x": ENTRIES, "cap_feats": ENTRIES, "siglip_feats": ENTRIES, "image_noise_mask": ENTRIES}))),
    # DeepFloyd IF: pixel UNets with learned-variance channels; the pipeline guides the noise channels only.
    "IFPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "IFImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "IFInpaintingPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "IFSuperResolutionPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "IFImg2ImgSuperResolutionPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "IFInpaintingSuperResolutionPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    # Kandinsky 3 writes (s + 1) c - s u: CFG at w = s + 1.
    "Kandinsky3Pipeline": dict(denoiser="unet", batch="uncond_first", quirks=(CondPlus(),)),
    "Kandinsky3Img2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=(CondPlus(),)),
    # Without a negative prompt the uncond half is zero embeddings, so it always runs; rotary_embedding: (cos, sin).
    "StableAudioPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        BatchDims({"rotary_embedding": None}),)),
    # Cosmos 2.5 text-to-world (cond pass first): with `image` or `video` it steps the conditioning frames' known
    # velocity in both halves, which apg does not reproduce.
    "Cosmos2_5_PredictBasePipeline": dict(denoiser="transformer", batch="separate", quirks=(CondPlus(), *(
        _q.RefuseGiven(arg, "it steps the conditioning frames' known velocity, not a guided one")
        for arg in ("image", "video")
    ))),
    # Kandinsky 2.2 decoders: IF's pattern (learned-variance channels, the cond half's variance appended).
    "KandinskyV22Pipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "KandinskyV22Img2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "KandinskyV22InpaintPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "KandinskyV22ControlnetPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "KandinskyV22ControlnetImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "PRXPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "AudioLDM2Pipeline": dict(denoiser="unet", batch="uncond_first"),
    # Kandinsky 2.1 decoders: the same learned-variance pattern.
    "KandinskyPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "KandinskyImg2ImgPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "KandinskyInpaintPipeline": dict(denoiser="unet", batch="uncond_first", quirks=_LEARNED_SIGMA),
    "StableAudio3Pipeline": dict(denoiser="transformer", batch="uncond_first"),
    # Cosmos 2 (cond pass first) writes x0 = c_skip x + c_out F per pass, then x0_c + s (x0_c - x0_u): CFG at
    # w = s + 1 on x0, stepped as (x - x0) / s on Karras sigmas from 80 (the EDM frame: apg.schedulers).
    "Cosmos2TextToImagePipeline": dict(denoiser="transformer", batch="separate", quirks=(
        CondPlus(), _q.SteppedWithLatents(_q.cosmos2_stepped))),
    # PRXPixel's transformer predicts x0 in pixels; it steps (x - x0) / max(s, 0.05).
    "PRXPixelPipeline": dict(denoiser="transformer", batch="uncond_first", quirks=(
        _q.SteppedWithLatents(_q.prx_pixel_stepped),)),
    # Inverted flow sigmas (s runs 0 -> 1, the model predicts x0 - eps): read by apg.schedulers.
    "MochiPipeline": dict(denoiser="transformer", batch="uncond_first"),
    "LongCatAudioDiTPipeline": dict(denoiser="transformer", batch="separate"),
    # The SD latent upscaler preconditions outside its UNet and steps x0 (Euler, prediction "sample").
    "StableDiffusionLatentUpscalePipeline": dict(denoiser="unet", batch="uncond_first", quirks=(
        _q.SteppedWithLatents(_q.latent_upscale_stepped),)),
    # -- end of family misc --
    # -- family extra --
    # Its prior runs first with its own CFG (`prior_guidance_scale`, `prior_scheduler`), left stock; then the unet.
    "StableUnCLIPPipeline": dict(denoiser="unet", batch="uncond_first"),
    # -- end of family extra --
}
