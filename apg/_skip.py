"""Skip the model evaluations a guidance rule does not use: decide before the model runs, then run less of it.

Before the first model call of each step, the rule is asked (Guidance.needs_cond / needs_uncond) at the sigma
and step of the evaluation about to happen, read from the scheduler's state (apg.schedulers.upcoming). Where it
needs no uncond prediction (outside its interval, at w = 1), a separate-pass pipeline's uncond call returns the
cond call's output without running the model, and a one-pass pipeline's denoiser runs on the cond half of its
batch (every per-sample input cut alike: quirks.BatchDims; a ControlNet too: quirks.Conditioners) and
hands back [cond, cond]; where it needs no model at all (CFG-Zero*'s zeroed steps) the denoiser returns zeros
shaped as it would (quirks.ZeroOutput). Either way the pipeline's own CFG line gives the cond prediction, and apg/_run.py guides from it
with Guidance.cond_only. `set_skipping(False)` turns this off, globally or for a `with` block.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import NamedTuple

import torch

from .quirks import ENTRIES, FOLDED, BatchDims, ZeroOutput
from .schedulers import upcoming

__all__ = ["set_skipping", "skipping_enabled", "Skipper"]

_enabled = [True]


class set_skipping:
    """Turn skipping on or off for every guided call: `apg.set_skipping(False)`, or `with apg.set_skipping(False):`
    for the calls inside the block only (then the previous setting returns), as torch.set_grad_enabled."""

    def __init__(self, enabled: bool):
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}")
        self.previous, _enabled[0] = _enabled[0], enabled

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        _enabled[0] = self.previous
        return False


def skipping_enabled() -> bool:
    """Whether guided calls skip the model evaluations their rule does not use (the default)."""
    return _enabled[0]


class Plan(NamedTuple):
    """The passes one step runs, decided at sigma before its first model evaluation."""

    cond: bool
    uncond: bool
    sigma: float
    scale_fixed: bool


def _batch(first) -> int:
    return len(first) if isinstance(first, list) else first.shape[0]


def _cut(value, where, start: int, size: int, batch: int):
    """`value` with its samples [start, start + size) kept, where it holds `batch` of them along `where`."""
    if where is None:
        return value
    if where == ENTRIES:
        return value[start:start + size]
    if isinstance(value, torch.Tensor) and where == FOLDED:  # k rows per sample along dim 0, sample-major
        rows = value.shape[0] // batch if value.ndim and value.shape[0] % batch == 0 else 0
        return value.narrow(0, start * rows, size * rows) if rows else value
    if isinstance(value, torch.Tensor):
        return value.narrow(where, start, size) if value.ndim > where and value.shape[where] == batch else value
    if isinstance(value, dict):
        return {k: _cut(v, where, start, size, batch) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_cut(v, where, start, size, batch) for v in value)
    return value


def _doubled(x):
    """[cond, cond] from the cond half: both halves equal, so the pipeline's CFG line gives cond."""
    return x + x if isinstance(x, list) else torch.cat([x, x])


def _doubled_tree(output):
    """Every tensor of a conditioner's output (tuples, lists, Diffusers output objects) doubled along dim 0."""
    if isinstance(output, torch.Tensor):
        return torch.cat([output, output])
    if type(output) in (list, tuple):
        return type(output)(_doubled_tree(x) for x in output)
    if dataclasses.is_dataclass(output):
        return dataclasses.replace(output, **{f.name: _doubled_tree(getattr(output, f.name))
                                              for f in dataclasses.fields(output)})
    return output


def _with_prediction(output, prediction):
    """`output` (a tuple or a Diffusers output object) with its first field replaced."""
    if isinstance(output, tuple):
        return (prediction, *output[1:])
    first = dataclasses.fields(output)[0].name
    return dataclasses.replace(output, **{first: prediction})


class Skipper:
    """One guided run's skipping: wraps its denoisers' forward and holds the plan of the step being evaluated."""

    def __init__(self, run):
        self.run = run
        self.plan: Plan | None = None  # None until the step's first denoiser call
        self.calls = 0  # denoiser calls in this step
        self.cond_output = None  # a separate-pass step's cond output, handed back for its uncond call
        self.full_batch = None  # rows of a one-pass call with both halves: the batch of the run's first call

    def take(self) -> Plan | None:
        """The plan of the step being stepped now; the next call starts a new step."""
        plan, self.plan, self.calls, self.cond_output = self.plan, None, 0, None
        return plan

    def _decide(self, module, arguments) -> Plan:
        run, step = self.run, self.run.step
        scheduler = run.pipe.scheduler
        model_timestep = next((arguments[n] for n in ("timestep", "timesteps", "t") if n in arguments), None)
        if run.family == "alphas_cumprod" and model_timestep is None:
            return Plan(True, True, float("nan"), True)  # no timestep to read the noise level from: run both
        timestep, sigma = upcoming(scheduler, run.family, model_timestep)
        run.step_scale(module, timestep)
        if any(quirk.both_passes(run) for quirk in run.spec.quirks):
            return Plan(True, True, sigma, run.scale_fixed)
        # A later scale other than this one (Wan 2.2's second expert, CogVideoX's dynamic scale) makes a
        # momentum state built at w = 1 count.
        fixed = run.scale_fixed
        cond = run.guidance.needs_cond(sigma, step)
        return Plan(cond, cond and run.guidance.needs_uncond(sigma, step, scale_fixed=fixed), sigma, fixed)

    def check(self, plan: Plan, sigma: float, step: int):
        """RuntimeError where the rule, at the sigma the scheduler steps, needs a pass that was skipped."""
        guidance = self.run.guidance
        if (not plan.cond and guidance.needs_cond(sigma, step)) or (
            not plan.uncond and guidance.needs_uncond(sigma, step, scale_fixed=plan.scale_fixed)
        ):
            raise RuntimeError(
                f"{type(self.run.pipe).__name__}: apg skipped a model pass at sigma {plan.sigma} (step {step}) that "
                f"the rule needs at the sigma the scheduler steps, {sigma}; call with apg.set_skipping(False)"
            )

    def _zeros(self, module, signature, arguments):
        """What the denoiser returns at a step whose result needs no model: zeros of its output's shape."""
        first = next(iter(arguments.values()))
        declared = self.run.spec.quirk(ZeroOutput)
        if declared is not None:
            zeros = declared.zeros(module, first)
        else:
            zeros = [torch.zeros_like(x) for x in first] if isinstance(first, list) else torch.zeros_like(first)
        return_dict = arguments.get("return_dict", signature.parameters.get("return_dict", None))
        return_dict = return_dict.default if isinstance(return_dict, inspect.Parameter) else return_dict
        if return_dict is False:
            return (zeros,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=zeros)

    def _cond_half(self, inner, call, batch):
        """`inner` called on the cond half of every per-sample argument of `call` (a one-pass batch of `batch`)."""
        spec, half = self.run.spec, batch // 2
        start = half if spec.batch == "uncond_first" else 0
        dims = spec.quirk(BatchDims).dims if spec.quirk(BatchDims) else {}
        for name, value in call.arguments.items():
            call.arguments[name] = _cut(value, dims.get(name, 0), start, half, batch)
        return inner(*call.args, **call.kwargs)

    def _denoise(self, module, inner, signature, call):
        """The denoiser's call under this step's plan, with an output of the shape the pipeline expects."""
        plan, index = self.plan, self.calls
        self.calls += 1
        if self.run.spec.batch == "separate":  # cond call, then uncond call
            if index == 1 and not plan.uncond:
                return self.cond_output
            run_model = plan.cond or index > 1
            out = inner(*call.args, **call.kwargs) if run_model else self._zeros(module, signature, call.arguments)
            if index == 0:
                self.cond_output = out
            return out
        batch = _batch(next(iter(call.arguments.values())))
        self.full_batch = self.full_batch or batch  # the run's first call has both halves
        if (plan.cond and plan.uncond) or batch != self.full_batch:
            return inner(*call.args, **call.kwargs)
        if not plan.cond:
            return self._zeros(module, signature, call.arguments)
        out = self._cond_half(inner, call, batch)
        prediction = out if isinstance(out, (torch.Tensor, list)) else out[0]
        return _with_prediction(out, _doubled(prediction)) if prediction is not out else _doubled(out)

    def _condition(self, module, inner, signature, call):
        """A conditioner's call (ControlNet): on the cond half where the step needs no uncond pass, output doubled.

        Only once the denoiser's first call has shown the batch with both halves (guess mode feeds a ControlNet
        the cond half alone: that passes as it is).
        """
        batch = _batch(next(iter(call.arguments.values())))
        if self.plan.uncond or batch != self.full_batch:
            return inner(*call.args, **call.kwargs)
        return _doubled_tree(self._cond_half(inner, call, batch))

    def shadow(self, module, conditioner: bool = False):
        """Shadow `module.forward` (the denoiser's, or a conditioner's) for this run; returns what restores it."""
        shadowed = module.__dict__.get("forward")
        inner = module.forward
        signature = inspect.signature(getattr(module, "_orig_mod", module).forward)  # torch.compile's: the model's
        body = self._condition if conditioner else self._denoise

        @functools.wraps(inner)  # so a guided run nested in this one (from_pipe) reads the model's signature
        def forward(*args, **kwargs):
            if not self.run.active() or self.run.unguided_step():  # the pipeline's own cond-only steps as they are
                return inner(*args, **kwargs)
            call = signature.bind(*args, **kwargs)
            if self.plan is None:
                self.plan = self._decide(module, call.arguments)
            return body(module, inner, signature, call)

        module.forward = forward

        def restore():
            if shadowed is None:
                del module.forward
            else:
                module.forward = shadowed

        return restore
