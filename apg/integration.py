"""Guide stock Diffusers pipelines with an `apg.Guidance` (in x0 space, or raw for raw rules): `guide` and the mixin.

The table of supported pipelines is apg/registry.py; what happens inside one guided call is apg/_run.py.
"""

from __future__ import annotations

import dis
import functools
import inspect
import sys

import torch

from . import guider as guider_slot
from ._run import run_guided
from .guidance import Guidance
from .registry import PipelineSpec, register_pipeline, spec_for
from .schedulers import check_scheduler

__all__ = ["guide", "GuidancePipelineMixin", "register_pipeline", "SPACES"]

SPACES = ("x0", "raw")  # "x0": the paper's denoised space; "raw": the model's raw output (Diffusers' guiders)


def _check_space(space):
    if space is not None and space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r} (None: the rule's own space)")


def _resolve_space(guidance: Guidance, space: str | None) -> str:
    """The rule's own space (`space=None`), or "raw" forced for an x0 rule; "x0" for a raw rule is an error."""
    _check_space(space)
    if space is None:
        return guidance.space
    if guidance.space == "raw" and space != "raw":
        raise ValueError(
            f"space={space!r} conflicts with {guidance!r}, which is defined on the model's raw output; "
            "leave space unset (or pass 'raw')"
        )
    return space


def _check(pipe, guidance, space) -> tuple[PipelineSpec | None, str]:
    """The pipeline's spec and the resolved space; errors naming the bad argument."""
    if not isinstance(guidance, Guidance):
        raise TypeError(f"guidance must be an apg.Guidance (one of apg.METHODS) or None, got {guidance!r}")
    space = _resolve_space(guidance, space)
    if guider_slot.holds_guider(pipe):
        guider_slot.check(pipe)
        return None, space  # no spec: guided through the guider slot
    spec = spec_for(pipe)
    denoiser = getattr(pipe, spec.denoiser, None)
    if not isinstance(denoiser, torch.nn.Module):
        raise ValueError(f"{type(pipe).__name__}.{spec.denoiser} must be a torch module, got {denoiser!r}")
    check_scheduler(pipe.scheduler)
    return spec, space


def _call_site(depth: int) -> tuple:
    """(frame id, code, last instruction) of the frame `depth` levels above the caller."""
    frame = sys._getframe(depth + 1)
    return id(frame), frame.f_code, frame.f_lasti


def _entered_from(site) -> bool:
    """Whether the running __enter__ comes straight from the apg.guide call at `site`.

    True for `with apg.guide(pipe, g):` (and ExitStack.enter_context(apg.guide(pipe, g))): the frame that called
    guide runs, as its next instruction after that call, the one that enters. A later bare `with pipe:` is not.
    """
    frame = sys._getframe(2)
    for _ in range(3):  # the `with` statement's frame, or contextlib's frame above it
        if frame is None:
            return False
        if id(frame) == site[0] and frame.f_code is site[1]:
            offsets = [i.offset for i in dis.get_instructions(frame.f_code) if i.opname != "PRECALL"]
            running = max(o for o in offsets if o <= frame.f_lasti)
            return running == min((o for o in offsets if o > site[2]), default=None)
        frame = frame.f_back
    return False


class GuidancePipelineMixin:
    """Mix into a stock pipeline class: `pipe(..., guidance=apg.APG(...))` guides that call.

    Without `guidance=`, the guidance set by `apg.guide(pipe, g)` applies; with neither, stock behaviour.
    The rule's own space applies (x0; raw for CFG-Zero*); `guidance_space="raw"` guides an x0 rule on the
    model's raw output instead (parity with Diffusers' guiders).
    """

    _apg_guidance: Guidance | None = None
    _apg_space: str | None = None  # None: the rule's own

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
        spec, space = _check(self, guidance, space)
        if spec is None:
            return guider_slot.run_guided(self, super().__call__, guidance, space, args, kwargs)
        return run_guided(self, spec, super().__call__, guidance, space, args, kwargs)

    def __enter__(self):
        # `with apg.guide(pipe, g):` restores the state from before that call; any other `with pipe:` keeps the
        # current state and restores it on exit.
        current = (type(self), self._apg_guidance, self._apg_space)
        before, site = self.__dict__.pop("_apg_before", (current, None))
        self.__dict__.setdefault("_apg_saved", []).append(before if site and _entered_from(site) else current)
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


def guide(pipe, guidance: Guidance | None, *, space: str | None = None):
    """Switch `pipe` to `guidance` in place and return it; `None` restores stock behaviour.

    Also a context manager: `with apg.guide(pipe, g): ...` restores the previous state on exit.
    While a guidance is set, `pipe(...)` runs its unconditional pass and the guidance's scale governs;
    passing the pipeline's own scale argument (`guidance_scale=`) raises a ValueError. `space=None` applies
    the rule in its own space (`guidance.space`); `space="raw"` forces the model's raw output.
    Every step passes the rule its context: sigma (apg.schedulers.noise_level) and the step index.
    """
    if guidance is not None:
        _check(pipe, guidance, space)  # fail here, not at the first call
    else:
        _check_space(space)
    state = pipe.__dict__
    before = (type(pipe), state.get("_apg_guidance"), state.get("_apg_space"))
    state["_apg_before"] = (before, _call_site(1))  # for `with apg.guide(...)`
    pipe.__class__ = _guided_class(type(pipe))
    state["_apg_guidance"], state["_apg_space"] = guidance, space
    return pipe
