"""One guided pipeline call: capture the denoiser's outputs, guide them in x0 space, step the scheduler.

Per call, a forward hook on the denoiser records its conditional and unconditional outputs;
`scheduler.step` is shadowed on the instance by a wrapper that turns both into x0 with the scheduler's own
coefficients, applies the guidance with its step context (sigma, step), maps the result back to the model's
parameterization
(`out_uncond + (x0_guided - x0_uncond) / b`, exact) and calls the step it shadows (a user's own instance-level
wrapper, if there is one, then the real step). Both are removed when the call ends, whether it returns or
raises. The pipeline's own CFG line still runs; its result is replaced. A step the pipeline runs without CFG
(Diffusers' CFG cutoff callbacks) passes through unguided, as stock. Where the rule needs no uncond prediction
(or no model at all) at a step, apg/_skip.py runs less of the denoiser (and of a ControlNet) at that step.

Only the innermost guided run on this thread is fed and steps: what the step-end callbacks and the shadowed
step run (a stock pipeline sharing the denoiser and scheduler, say) runs with no guided run active.

The step context: `step` counts scheduler.step calls from 0, as Diffusers' loops count `i` over
scheduler.timesteps; `sigma` is the EDM noise level of the sample that step's model evaluation saw. Heun-type
schedulers evaluate twice per step and count twice: the first evaluation gets sigma_i, the second (the
correction at the Euler prediction) sigma_{i+1}, and its own step index.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import threading

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from . import _skip
from ._verify import check_combination
from ._x0 import guided_output
from .errors import InputError
from .guidance import Guidance
from .quirks import Conditioners
from .registry import PipelineSpec
from .schedulers import check_scheduler, noise_level

__all__ = ["run_guided"]

_CALLBACK_ARGS = ("callback_on_step_end", "callback")  # Diffusers' per-step callbacks (`callback`: deprecated)

# Innermost guided run per thread: a denoiser shared by two pipelines (from_pipe) feeds only that run.
_active = threading.local()


def _active_runs() -> list:
    """The thread's guided runs, innermost last; None: a callback of the run below it is running."""
    if not hasattr(_active, "runs"):
        _active.runs = []
    return _active.runs


def innermost(run) -> bool:
    """Whether `run` is this thread's innermost guided run: model calls and steps now belong to it."""
    runs = _active_runs()
    return bool(runs) and runs[-1] is run


def _outside_runs(function, *args, **kwargs):
    """function(*args, **kwargs) with no guided run active: a pipeline it runs neither feeds nor steps ours."""
    runs = _active_runs()
    runs.append(None)
    try:
        return function(*args, **kwargs)
    finally:
        runs.pop()


class _CallbacksOutsideRuns(MultiPipelineCallbacks):
    """A Diffusers callback object run outside the guided runs; still one, so the pipeline reads its tensor_inputs."""

    def __init__(self, callback):
        self.callback = callback

    @property
    def tensor_inputs(self):
        return self.callback.tensor_inputs

    def __call__(self, *args):
        return _outside_runs(self.callback, *args)


def _callback_outside_runs(callback):
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        return _CallbacksOutsideRuns(callback)
    return functools.partial(_outside_runs, callback)


def _cfg_turned_off(pipe) -> bool:
    """Whether the pipeline runs this step without CFG: a CFG cutoff callback set its scale to 0."""
    return getattr(pipe, "do_classifier_free_guidance", True) is False


def shadow_step(run, scheduler):
    """Wrap `scheduler.step` as it is for `run`: the bound method, or a user's instance-level wrapper, in the chain.

    `run.guide_output(model_output, timestep, sample)` replaces the model output while `run.active()`.
    `inspect.signature` sees what it wraps through __wrapped__, as the pipeline would without apg; the
    arguments are bound by name against the scheduler class's own step.
    """
    step = scheduler.step
    # By name: CogVideoXDPM's step takes (model_output, old_x0, timestep, ...).
    signature = inspect.signature(type(scheduler).step.__get__(scheduler))

    @functools.wraps(step)
    def guided(*args, **kwargs):
        if not run.active():  # a pipeline run from a callback, or an inner guided run sharing the scheduler
            return step(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        given = call.arguments
        given["model_output"] = run.guide_output(given["model_output"], given["timestep"], given["sample"])
        return _outside_runs(step, *call.args, **call.kwargs)

    return guided


class _GuidedRun:
    """State of one guided pipeline call: its own copy of the guidance and the captured outputs."""

    def __init__(self, pipe, spec: PipelineSpec, guidance: Guidance, space: str, call, bound: dict):
        self.pipe, self.spec, self.space = pipe, spec, space
        self.call, self.bound = call, bound  # the stock __call__ and the arguments as the caller passed them
        self.guidance = copy.deepcopy(guidance)  # the caller's object never carries this run's momentum
        self.guidance.reset()
        self.family = check_scheduler(pipe.scheduler)
        self.outputs: list[torch.Tensor] = []  # denoiser outputs since the last step
        self.scale = self.guidance.guidance_scale  # the guidance's own scale; a step may use another
        self.pipeline_scale = _pipeline_scale(guidance)  # what the pipeline is given: it runs its uncond pass
        self.module = None  # the denoiser that produced self.outputs
        self.step = 0  # scheduler.step calls so far: the guidance's `step`
        self.verified = False  # the pipeline's own combination checked against the registered pattern
        self.skipper = _skip.Skipper(self) if _skip.skipping_enabled() else None

    def call_value(self, name):
        """Call argument `name` as passed, else its default in the pipeline's signature."""
        return self.bound[name] if name in self.bound else self.call_default(name)

    def call_default(self, name):
        """The default of call argument `name`, from the nearest `__call__` that names it (not a **kwargs one)."""
        for cls in type(self.pipe).__mro__:
            parameter = inspect.signature(vars(cls).get("__call__", _no_call)).parameters.get(name)
            if parameter is not None:
                return parameter.default
        raise TypeError(f"{type(self.pipe).__name__}.__call__ has no argument {name!r}")

    def active(self) -> bool:
        """Whether a model call now belongs to this run (the innermost guided run of this thread)."""
        return innermost(self)

    @property
    def scale_fixed(self) -> bool:
        """Whether every step of this call has the guidance's own weight (no second expert's, no dynamic one)."""
        return not any(quirk.scale_varies(self) for quirk in self.spec.quirks)

    def capture(self, module, args, output):
        if self.active():
            output = output[0] if isinstance(output, tuple) else output.sample
            for quirk in self.spec.quirks:
                output = quirk.captured(self.pipe, output)
            self.outputs.append(output)
            self.module = module

    def weight(self, module, timestep, scale):
        """The CFG weight of the step `module` evaluates at `timestep`, from the call's `scale` (quirks')."""
        for quirk in self.spec.quirks:
            scale = quirk.scale(self, module, timestep, scale)
        return scale

    def step_scale(self, module, timestep):
        """Set the guidance's weight for the step `module` evaluates; its momentum state carries on."""
        scale = self.weight(module, timestep, self.scale)
        if scale is not self.guidance.guidance_scale:
            self.guidance.guidance_scale, self.guidance._scale_cache = scale, None

    def unguided_step(self) -> bool:
        """Whether the pipeline runs this step without its uncond pass: CFG truncated or cut off."""
        # CFG turned off after a guided step (not a pipeline that never runs CFG: that is an error below).
        return any(quirk.unguided(self) for quirk in self.spec.quirks) or (self.step > 0 and _cfg_turned_off(self.pipe))

    def _split(self, model_output):
        outputs, self.outputs = self.outputs, []
        spec, name = self.spec, type(self.pipe).__name__
        truncated = self.unguided_step()
        expected = 2 if spec.batch == "separate" and not truncated else 1
        if len(outputs) != expected:
            raise RuntimeError(
                f"{name}: expected {expected} {spec.denoiser} evaluation(s) before each scheduler.step "
                f"(batch={spec.batch!r}), got {len(outputs)}; this call does not follow the registered CFG pattern"
            )
        if truncated:  # CFG truncated or cut off by the pipeline: it steps the cond prediction alone
            return outputs[0], None
        if spec.batch == "separate":
            return outputs
        first, second = outputs[0].chunk(2)
        return (second, first) if spec.batch == "uncond_first" else (first, second)

    def _after(self, guided, pred_cond):
        """What the pipeline does after its CFG line (the quirks'), done to `guided`."""
        for quirk in self.spec.quirks:
            guided = quirk.after(self, guided, pred_cond)
        return guided

    def guide_output(self, model_output, timestep, sample):
        """Model output whose x0 is the guided x0 (or, in raw space, the guided output itself)."""
        name = type(self.pipe).__name__
        variance = _learned_variance(self.pipe.scheduler, model_output, sample)
        if variance is not None:  # the noise channels are guided; the variance the pipeline chose passes as it is
            return torch.cat([self.guide_output(model_output[:, :sample.shape[1]], timestep, sample), variance], 1)
        if model_output.shape != sample.shape:
            raise RuntimeError(
                f"{name}: scheduler.step got model_output {tuple(model_output.shape)} "
                f"for sample {tuple(sample.shape)}; apg guides outputs shaped like the latents"
            )
        plan = self.skipper.take() if self.skipper is not None else None
        pred_cond, pred_uncond = self._split(model_output)
        step, self.step = self.step, self.step + 1
        if pred_uncond is None:
            return model_output  # a truncated step, unguided as stock
        for quirk in self.spec.quirks:  # [n, ...] shaped like model_output from here on
            pred_cond = quirk.stepped(self.pipe, pred_cond, model_output, sample)
            pred_uncond = quirk.stepped(self.pipe, pred_uncond, model_output, sample)
        channels, computed_in = model_output.shape[1], pred_cond.dtype
        # [n, C, ...] each, the model's parameterization; learned-sigma channels beyond C are dropped.
        pred_cond = pred_cond[:, :channels].to(model_output.dtype)
        pred_uncond = pred_uncond[:, :channels].to(model_output.dtype)
        if pred_cond.shape != pred_uncond.shape or pred_cond.shape[1:] != model_output.shape[1:]:
            raise RuntimeError(
                f"{name}: the {self.spec.denoiser} outputs {tuple(pred_cond.shape)} and {tuple(pred_uncond.shape)} "
                f"do not split into halves shaped like the scheduler's model_output {tuple(model_output.shape)}; "
                "the pipeline did not run its unconditional pass as registered"
            )
        skipped = plan is not None and not plan.uncond  # pred_uncond is a stand-in: the rule guides from cond alone
        if not self.verified and not skipped:
            pipeline_weight = self.weight(self.module, timestep, self.spec.weight(self.pipeline_scale))
            check_combination(name, model_output, pred_cond, pred_uncond, pipeline_weight, self._after, computed_in)
            self.verified = True
        self.step_scale(self.module, timestep)
        if skipped:
            self.skipper.check(plan, noise_level(self.pipe.scheduler, self.family, timestep), step)
            pred_uncond = None
        guided = guided_output(self.guidance, self.space, self.pipe.scheduler, self.family, timestep, sample,
                               pred_cond, pred_uncond, step)
        guided = self._after(guided, pred_cond)
        if guided.shape != model_output.shape:
            raise RuntimeError(
                f"{name}: the {self.spec.denoiser} ran on batch {pred_cond.shape[0] * 2} and the scheduler "
                f"steps batch {model_output.shape[0]}; the pipeline did not run its unconditional pass as registered"
            )
        return guided


def _learned_variance(scheduler, model_output, sample):
    """The variance channels a learned-variance scheduler reads after the noise ones (DeepFloyd IF), else None."""
    learned = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
    if learned and model_output.shape[1] == 2 * sample.shape[1] and model_output.shape[2:] == sample.shape[2:]:
        return model_output[:, sample.shape[1]:]
    return None


def _pipeline_scale(guidance: Guidance) -> float:
    # Any scale > 1 makes the pipeline run its unconditional pass; its own CFG result is then replaced.
    scale = guidance.guidance_scale
    scale = float(scale.max()) if isinstance(scale, torch.Tensor) else scale
    return scale if scale > 1.0 else 2.0


def _no_call():
    pass


def _arguments(call, args, kwargs) -> dict:
    """The call's arguments by name, those passed through a **kwargs (a user's subclass's `__call__`) included."""
    signature = inspect.signature(call)
    bound = signature.bind_partial(*args, **kwargs).arguments
    for name, parameter in signature.parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    return bound


def run_guided(pipe, spec: PipelineSpec, call, guidance: Guidance, space: str, args, kwargs):
    """Run `call(*args, **kwargs)`, a stock `__call__` of `pipe`, with its CFG result replaced by `guidance`."""
    bound = _arguments(call, args, kwargs)
    if spec.scale_arg in bound:
        raise InputError(
            f"{spec.scale_arg}={bound[spec.scale_arg]!r} was passed to a {type(pipe).__name__} guided by "
            f"{guidance!r}; the guidance's own scale governs. Set the scale on the guidance object, or call "
            "apg.guide(pipe, None) for stock behaviour"
        )
    run = _GuidedRun(pipe, spec, guidance, space, call, bound)
    for quirk in spec.quirks:
        quirk.start(run)
    kwargs = {**kwargs, spec.scale_arg: run.pipeline_scale}
    arg = spec.negative_prompt_arg
    if arg and bound.get(arg) is None and bound.get("negative_prompt_embeds") is None:
        kwargs[arg] = ""  # the uncond pass runs only with a negative prompt
    denoisers = [getattr(pipe, spec.denoiser)]
    denoisers += [module for quirk in spec.quirks for module in quirk.modules(pipe) if module is not denoisers[0]]
    handles = [denoiser.register_forward_hook(run.capture) for denoiser in denoisers]
    restores = []
    if run.skipper is not None:
        declared = spec.quirk(Conditioners)
        conditioners = [getattr(pipe, name, None) for name in (declared.names if declared else ())]
        restores = [run.skipper.shadow(denoiser) for denoiser in denoisers]
        restores += [run.skipper.shadow(module, conditioner=True) for module in conditioners
                     if isinstance(module, torch.nn.Module)]
    try:
        with guided_call(run, pipe.scheduler):
            return call(*args, **callbacks_outside_runs(kwargs))
    finally:
        for handle in handles:
            handle.remove()
        for restore in reversed(restores):
            restore()


def callbacks_outside_runs(kwargs: dict) -> dict:
    """Call arguments with Diffusers' step callbacks run outside the guided runs: a pipeline run there is no part."""
    return {k: _callback_outside_runs(v) if k in _CALLBACK_ARGS and callable(v) else v for k, v in kwargs.items()}


@contextlib.contextmanager
def guided_call(run, scheduler):
    """For one call: `scheduler.step` shadowed for `run` (shadow_step), and `run` the thread's innermost guided run."""
    shadowed = scheduler.__dict__.get("step")  # a user's wrapper, or an outer guided run's on a shared scheduler
    scheduler.step = shadow_step(run, scheduler)
    _active_runs().append(run)
    try:
        yield
    finally:
        _active_runs().remove(run)
        if shadowed is None:
            del scheduler.step
        else:
            scheduler.step = shadowed
