"""Guide stock Diffusers pipelines with an `apg.Guidance` in denoised (x0) space.

Mechanism, per guided call: a forward hook on the denoiser records its conditional and unconditional
outputs; `scheduler.step` is shadowed on the instance by a wrapper that turns both into x0 with the
scheduler's own coefficients, applies the guidance, maps the result back to the model's parameterization
(`out_uncond + (x0_guided - x0_uncond) / b`, exact) and calls the real step. Both are removed when the call
ends, whether it returns or raises. The pipeline's own CFG line still runs; its result is replaced.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
from dataclasses import dataclass

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from .guidance import Guidance
from .schedulers import check_scheduler, denoised_coefficients

__all__ = ["guide", "GuidancePipelineMixin", "register_pipeline", "SPACES"]

SPACES = ("x0", "raw")  # "x0": the paper's denoised space; "raw": the model's raw output (Diffusers' guiders)
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
):
    """Declare a pipeline class that follows the standard CFG pattern, so `apg.guide` supports it.

    denoiser: attribute holding the model (`"unet"`, `"transformer"`); its output is `.sample` or `[0]`.
    batch: `"uncond_first"` (one pass on `[uncond, cond]`, SD-style), `"cond_first"` (one pass on
    `[cond, uncond]`, DiT-style) or `"separate"` (two passes per step, cond then uncond, Flux true CFG).
    scale_arg: the call argument that turns CFG on (`"guidance_scale"`; Flux: `"true_cfg_scale"`).
    rescale_attr: pipeline attribute holding `guidance_rescale` (Lin et al.), re-applied after guidance.
    negative_prompt_arg: the pipeline runs its uncond pass only with this argument; "" is passed if absent.
    steps_both_halves: the pipeline steps the latents of both halves together (DiT).
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
    spec = PipelineSpec(denoiser, batch, scale_arg, rescale_attr, negative_prompt_arg, steps_both_halves)
    _REGISTRY[pipeline_cls] = spec
    return pipeline_cls


def _spec_for(pipe) -> PipelineSpec:
    for cls in type(pipe).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    supported = sorted(cls.__name__ for cls in _REGISTRY)
    raise ValueError(
        f"pipeline {type(pipe).__name__} is not supported by apg; supported pipelines: {supported} "
        "(apg.integration.register_pipeline declares another one that follows the standard CFG pattern)"
    )


def _check(pipe, guidance, space) -> PipelineSpec:
    if guidance is not None and not isinstance(guidance, Guidance):
        raise TypeError(f"guidance must be an apg.Guidance (APG, CFG, MomentumCFG) or None, got {guidance!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    spec = _spec_for(pipe)
    denoiser = getattr(pipe, spec.denoiser, None)
    if not isinstance(denoiser, torch.nn.Module):
        raise ValueError(f"{type(pipe).__name__}.{spec.denoiser} must be a torch module, got {denoiser!r}")
    check_scheduler(pipe.scheduler)
    return spec


# Innermost guided run per thread: a denoiser shared by two pipelines (from_pipe) feeds only that run.
_active = threading.local()


def _active_runs() -> list:
    if not hasattr(_active, "runs"):
        _active.runs = []
    return _active.runs


class _GuidedRun:
    """State of one guided pipeline call: its own copy of the guidance and the captured outputs."""

    def __init__(self, pipe, spec: PipelineSpec, guidance: Guidance, space: str):
        self.pipe, self.spec, self.space = pipe, spec, space
        self.guidance = copy.deepcopy(guidance)  # the caller's object never carries this run's momentum
        self.guidance.reset()
        self.family = check_scheduler(pipe.scheduler)
        self.outputs: list[torch.Tensor] = []  # denoiser outputs since the last step

    def capture(self, module, args, output):
        runs = _active_runs()
        if runs and runs[-1] is self:
            self.outputs.append(output[0] if isinstance(output, tuple) else output.sample)

    def guided_step(self, step):
        """Wrap the scheduler's bound `step`; `inspect.signature` sees the original through __wrapped__."""

        @functools.wraps(step)
        def guided(model_output, timestep, sample, *args, **kwargs):
            return step(self.guide_output(model_output, timestep, sample), timestep, sample, *args, **kwargs)

        return guided

    def _split(self, model_output):
        outputs, self.outputs = self.outputs, []
        spec, name = self.spec, type(self.pipe).__name__
        expected = 2 if spec.batch == "separate" else 1
        if len(outputs) != expected:
            raise RuntimeError(
                f"{name}: expected {expected} {spec.denoiser} evaluation(s) before each scheduler.step "
                f"(batch={spec.batch!r}), got {len(outputs)}; this call does not follow the registered CFG pattern"
            )
        if spec.batch == "separate":
            pred_cond, pred_uncond = outputs
        else:
            first, second = outputs[0].chunk(2)
            pred_uncond, pred_cond = (first, second) if spec.batch == "uncond_first" else (second, first)
        step_batch = pred_cond.shape[0] * (2 if spec.steps_both_halves else 1)
        if pred_cond.shape != pred_uncond.shape or model_output.shape[0] != step_batch:
            raise RuntimeError(
                f"{name}: the {spec.denoiser} ran on batch {sum(o.shape[0] for o in outputs)} and the scheduler "
                f"steps batch {model_output.shape[0]}; the pipeline did not run its unconditional pass as registered"
            )
        return pred_cond, pred_uncond

    def guide_output(self, model_output, timestep, sample):
        """Model output whose x0 is the guided x0 (or, in raw space, the guided output itself)."""
        if model_output.shape != sample.shape:
            raise RuntimeError(
                f"{type(self.pipe).__name__}: scheduler.step got model_output {tuple(model_output.shape)} "
                f"for sample {tuple(sample.shape)}; apg guides outputs shaped like the latents"
            )
        pred_cond, pred_uncond = self._split(model_output)
        n, channels = pred_cond.shape[0], model_output.shape[1]
        # [n, C, ...] each, the model's parameterization; learned-sigma channels beyond C are dropped.
        pred_cond = pred_cond[:, :channels].to(model_output.dtype)
        pred_uncond = pred_uncond[:, :channels].to(model_output.dtype)
        if pred_cond.shape[1:] != model_output.shape[1:]:
            raise RuntimeError(
                f"{type(self.pipe).__name__}: denoiser output {tuple(pred_cond.shape)} does not match the "
                f"scheduler's model_output {tuple(model_output.shape)}"
            )
        if self.space == "raw":
            guided = self.guidance(pred_cond, pred_uncond)
        else:
            a, b = denoised_coefficients(self.pipe.scheduler, self.family, timestep)
            if b == 0:
                raise RuntimeError(f"x0 does not depend on the model output at timestep {timestep} (noise level 0)")
            # At least float32: at high noise a * sample and b * output nearly cancel, too close for half precision.
            dtype = torch.promote_types(model_output.dtype, torch.float32)
            scaled_sample = sample[:n].to(dtype) * a  # x0 = a * sample + b * output, [n, C, ...]
            denoised_cond = torch.add(scaled_sample, pred_cond.to(dtype), alpha=b)
            denoised_uncond = torch.add(scaled_sample, pred_uncond.to(dtype), alpha=b)
            denoised = self.guidance(denoised_cond, denoised_uncond)
            guided = torch.add(pred_uncond.to(dtype), denoised - denoised_uncond, alpha=1.0 / b)
            guided = guided.to(model_output.dtype)
        rescale = getattr(self.pipe, self.spec.rescale_attr) if self.spec.rescale_attr else 0.0
        if rescale > 0:
            guided = rescale_noise_cfg(guided, pred_cond, guidance_rescale=rescale)
        return torch.cat([guided, guided]) if self.spec.steps_both_halves else guided


def _pipeline_scale(guidance: Guidance) -> float:
    # Any scale > 1 makes the pipeline run its unconditional pass; its own CFG result is then replaced.
    scale = guidance.guidance_scale
    scale = float(scale.max()) if isinstance(scale, torch.Tensor) else scale
    return scale if scale > 1.0 else 2.0


def _run_guided(pipe, call, guidance: Guidance, space: str, args, kwargs):
    spec = _check(pipe, guidance, space)
    bound = inspect.signature(call).bind_partial(*args, **kwargs).arguments
    if spec.scale_arg in bound:
        raise ValueError(
            f"{spec.scale_arg}={bound[spec.scale_arg]!r} was passed to a {type(pipe).__name__} guided by "
            f"{guidance!r}; the guidance's own scale governs. Set the scale on the guidance object, or call "
            "apg.guide(pipe, None) for stock behaviour"
        )
    kwargs = {**kwargs, spec.scale_arg: _pipeline_scale(guidance)}
    arg = spec.negative_prompt_arg
    if arg and bound.get(arg) is None and bound.get("negative_prompt_embeds") is None:
        kwargs[arg] = ""  # the uncond pass runs only with a negative prompt
    run = _GuidedRun(pipe, spec, guidance, space)
    scheduler = pipe.scheduler
    shadowed = scheduler.__dict__.get("step")  # an outer guided run on a shared scheduler
    handle = getattr(pipe, spec.denoiser).register_forward_hook(run.capture)
    scheduler.step = run.guided_step(type(scheduler).step.__get__(scheduler))
    _active_runs().append(run)
    try:
        return call(*args, **kwargs)
    finally:
        _active_runs().remove(run)
        handle.remove()
        if shadowed is None:
            del scheduler.step
        else:
            scheduler.step = shadowed


class GuidancePipelineMixin:
    """Mix into a stock pipeline class: `pipe(..., guidance=apg.APG(...))` guides that call in x0 space.

    Without `guidance=`, the guidance set by `apg.guide(pipe, g)` applies; with neither, stock behaviour.
    `guidance_space="raw"` guides the model's raw output instead (parity with Diffusers' guiders).
    """

    _apg_guidance: Guidance | None = None
    _apg_space: str = "x0"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Show the stock parameters plus ours to inspect.signature (and help()), not (*args, **kwargs).
        stock_call = super(GuidancePipelineMixin, cls).__call__
        stock = inspect.signature(stock_call)
        params = [p for p in stock.parameters.values() if p.kind is not p.VAR_KEYWORD]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                   for name in ("guidance", "guidance_space")]
        params += [p for p in stock.parameters.values() if p.kind is p.VAR_KEYWORD]

        def __call__(self, *args, **kwargs):
            return GuidancePipelineMixin.__call__(self, *args, **kwargs)

        __call__.__doc__ = stock_call.__doc__
        __call__.__signature__ = stock.replace(parameters=params)
        cls.__call__ = __call__

    def __call__(self, *args, guidance: Guidance | None = None, guidance_space: str | None = None, **kwargs):
        guidance = self._apg_guidance if guidance is None else guidance
        space = self._apg_space if guidance_space is None else guidance_space
        if guidance is None:
            if guidance_space is not None:
                raise ValueError(f"guidance_space={guidance_space!r} was passed without a guidance")
            return super().__call__(*args, **kwargs)
        return _run_guided(self, super().__call__, guidance, space, args, kwargs)

    def __enter__(self):
        # The state before the apg.guide call that returned this pipeline; a bare `with pipe:` keeps the current one.
        current = (type(self), self._apg_guidance, self._apg_space)
        self.__dict__.setdefault("_apg_saved", []).append(self.__dict__.pop("_apg_before", current))
        return self

    def __exit__(self, *exc_info):
        cls, self.__dict__["_apg_guidance"], self.__dict__["_apg_space"] = self.__dict__["_apg_saved"].pop()
        self.__class__ = cls
        return False


@functools.lru_cache(maxsize=None)
def _guided_class(cls):
    if issubclass(cls, GuidancePipelineMixin):
        return cls
    # Same name and module: save_pretrained records the stock class, and from_pretrained loads it back.
    names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (GuidancePipelineMixin, cls), names)


def guide(pipe, guidance: Guidance | None, *, space: str = "x0"):
    """Switch `pipe` to `guidance` in place and return it; `None` restores stock behaviour.

    Also a context manager: `with apg.guide(pipe, g): ...` restores the previous state on exit.
    While a guidance is set, `pipe(...)` runs its unconditional pass and the guidance's scale governs;
    passing the pipeline's own scale argument (`guidance_scale=`) raises a ValueError.
    """
    if guidance is not None:
        _check(pipe, guidance, space)  # fail here, not at the first call
    elif space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    state = pipe.__dict__
    state["_apg_before"] = (type(pipe), state.get("_apg_guidance"), state.get("_apg_space", "x0"))  # for `with`
    pipe.__class__ = _guided_class(type(pipe))
    state["_apg_guidance"], state["_apg_space"] = guidance, space
    return pipe


def _register_stock_pipelines():
    import diffusers

    for name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionXLPipeline",
                 "StableDiffusionXLImg2ImgPipeline"):
        rescale = None if name == "StableDiffusionImg2ImgPipeline" else "guidance_rescale"
        register_pipeline(getattr(diffusers, name), denoiser="unet", batch="uncond_first", rescale_attr=rescale)
    for name in ("StableDiffusion3Pipeline", "PixArtSigmaPipeline", "SanaPipeline"):
        register_pipeline(getattr(diffusers, name), denoiser="transformer", batch="uncond_first")
    register_pipeline(diffusers.DiTPipeline, denoiser="transformer", batch="cond_first", steps_both_halves=True)
    register_pipeline(diffusers.FluxPipeline, denoiser="transformer", batch="separate",
                      scale_arg="true_cfg_scale", negative_prompt_arg="negative_prompt")


_register_stock_pipelines()
