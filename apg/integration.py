"""Guide stock Diffusers pipelines with an `apg.Guidance` (in x0 space, or raw for raw rules): `guide` and the mixin.

The table of supported pipelines is apg/registry.py; what happens inside one guided call is apg/_run.py.

How a pipeline is guided: its class becomes one made once per stock class (the mixin first, then the stock
class, under the stock name and module, so `save_pretrained` records the stock class), and its instance dict
holds the guidance and the space. `guide(pipe, None)` puts the stock class back and removes both: the pipeline
is stock again in every respect. A guided pipeline pickles and deep-copies as the stock class plus its state
(`_new_guided` rebuilds the made class), so the copy is guided like the original.
"""

from __future__ import annotations

import functools
import inspect

import torch

from . import guider as guider_slot
from ._run import run_guided
from .errors import InputError, InputTypeError, UnsupportedError
from .guidance import Guidance
from .registry import PipelineSpec, register_pipeline, spec_for
from .schedulers import check_scheduler

__all__ = ["guide", "Guided", "GuidancePipelineMixin", "register_pipeline", "SPACES"]

SPACES = ("x0", "raw")  # "x0": the paper's denoised space; "raw": the model's raw output (Diffusers' guiders)


def _check_space(space):
    if space is not None and space not in SPACES:
        raise InputError(f"space must be one of {SPACES}, got {space!r} (None: the rule's own space)")


def _resolve_space(guidance: Guidance, space: str | None) -> str:
    """The rule's own space (`space=None`), or "raw" forced for an x0 rule; "x0" for a raw rule is an error."""
    _check_space(space)
    if space is None:
        return guidance.space
    if guidance.space == "raw" and space != "raw":
        raise InputError(
            f"space={space!r} conflicts with {guidance!r}, which is defined on the model's raw output; "
            "leave space unset (or pass 'raw')"
        )
    return space


def _check(pipe, guidance, space) -> tuple[PipelineSpec | None, str]:
    """The pipeline's spec and the resolved space; errors naming the bad argument."""
    if not isinstance(guidance, Guidance):
        raise InputTypeError(f"guidance must be an apg.Guidance (one of apg.METHODS) or None, got {guidance!r}")
    space = _resolve_space(guidance, space)
    if guider_slot.holds_guider(pipe):
        guider_slot.check(pipe)
        return None, space  # no spec: guided through the guider slot
    spec = spec_for(pipe)
    denoiser = getattr(pipe, spec.denoiser, None)
    if not isinstance(denoiser, torch.nn.Module):
        raise UnsupportedError(f"{type(pipe).__name__}.{spec.denoiser} must be a torch module, got {denoiser!r}")
    check_scheduler(pipe.scheduler)
    return spec, space


class GuidancePipelineMixin:
    """Mix into a stock pipeline class: `pipe(..., guidance=apg.APG(...))` guides that call.

    Without `guidance=`, the guidance set by `apg.guide(pipe, g)` applies; with neither, stock behaviour.
    The rule's own space applies (x0; raw for CFG-Zero*); `guidance_space="raw"` guides an x0 rule on the
    model's raw output instead (parity with Diffusers' guiders). A subclass that defines its own `__call__`
    keeps it (it reaches the guided call through `super().__call__`). `with pipe:` keeps the pipeline's current
    guidance and restores it when the block ends.
    """

    _apg_guidance: Guidance | None = None
    _apg_space: str | None = None  # None: the rule's own

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        owner = next(klass for klass in cls.__mro__ if "__call__" in vars(klass))
        if owner is not GuidancePipelineMixin:
            return  # the subclass (or a base before the mixin) has its own __call__
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
                raise InputError(f"guidance_space={guidance_space!r} was passed without a guidance")
            return super().__call__(*args, **kwargs)
        spec, space = _check(self, guidance, space)
        if spec is None:
            return guider_slot.run_guided(self, super().__call__, guidance, space, args, kwargs)
        return run_guided(self, spec, super().__call__, guidance, space, args, kwargs)

    def __enter__(self):
        self.__dict__.setdefault("_apg_saved", []).append(_state(self))
        return self

    def __exit__(self, *exc_info):
        saved = self.__dict__["_apg_saved"]
        state = saved.pop()
        if not saved:
            del self.__dict__["_apg_saved"]
        _apply(self, *state)
        return False

    def __reduce_ex__(self, protocol):
        reduced = super().__reduce_ex__(protocol)
        stock = vars(type(self)).get("_apg_stock")
        if stock is None:
            return reduced  # a class of its own, importable by name
        return (_new_guided, (stock,), *reduced[2:])  # the made class is not: name the stock one


@functools.lru_cache(maxsize=None)
def _guided_class(cls):
    """The class a guided `cls` pipeline runs as: the mixin before `cls`, under `cls`'s name."""
    if issubclass(cls, GuidancePipelineMixin):
        return cls
    # Same name and module: save_pretrained records the stock class, and from_pretrained loads it back.
    names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_apg_stock": cls}
    return type(cls.__name__, (GuidancePipelineMixin, cls), names)


def _new_guided(stock):
    """An empty instance of `stock`'s guided class: what a pickled or copied guided pipeline is rebuilt on."""
    cls = _guided_class(stock)
    return cls.__new__(cls)


def _state(pipe) -> tuple:
    """(guidance, space) that `pipe` runs with now; (None, None) when stock."""
    return pipe.__dict__.get("_apg_guidance"), pipe.__dict__.get("_apg_space")


def _apply(pipe, guidance: Guidance | None, space: str | None):
    """Make `pipe` run with `guidance` in `space`; None: its stock class, and no apg state left in it."""
    stock = vars(type(pipe)).get("_apg_stock", type(pipe))
    if guidance is None:
        pipe.__class__ = stock
        pipe.__dict__.pop("_apg_guidance", None)
        pipe.__dict__.pop("_apg_space", None)
    else:
        pipe.__class__ = _guided_class(stock)
        pipe.__dict__.update(_apg_guidance=guidance, _apg_space=space)


class Guided:
    """What `apg.guide` returns: the context manager of that one call, and otherwise the pipeline itself.

    `with` applies the call's guidance (again, should it have been changed since), gives the pipeline, and on
    leaving restores the guidance the pipeline had just before that `apg.guide` call. Calling it calls the
    pipeline; its attributes are the pipeline's (read and written through).
    """

    __slots__ = ("pipeline", "_applied", "_before")

    def __init__(self, pipeline, applied: tuple, before: tuple):
        self.pipeline, self._applied, self._before = pipeline, applied, before  # (guidance, space) each

    def __enter__(self):
        _apply(self.pipeline, *self._applied)
        return self.pipeline

    def __exit__(self, *exc_info):
        _apply(self.pipeline, *self._before)
        return False

    def __call__(self, *args, **kwargs):
        return self.pipeline(*args, **kwargs)

    def __getattr__(self, name):  # only names that are not the handle's own
        return getattr(object.__getattribute__(self, "pipeline"), name)

    def __setattr__(self, name, value):
        if name in Guided.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.pipeline, name, value)

    def __repr__(self):
        return f"<apg.guide({type(self.pipeline).__name__}, {self._applied[0]!r})>"


def guide(pipe, guidance: Guidance | None, *, space: str | None = None) -> Guided:
    """Guide `pipe` by `guidance` from now on, in place; `None` makes it a stock pipeline again.

    Returns a `Guided` handle. As a context manager it belongs to this one call: `with apg.guide(pipe, g):`
    runs the block guided by `g` and then restores the guidance `pipe` had just before this call (or stock
    behaviour), however the `with` gets the handle (directly, from a conditional expression or a helper
    function, through `contextlib.ExitStack`) and whether the block returns or raises. A handle entered later
    applies `g` again for its block. Otherwise the handle stands for the pipeline: `apg.guide(pipe, g)(prompt)`
    calls it, and its attributes are the pipeline's; `with ... as p` gives the pipeline itself.

    While a guidance is set, `pipe(...)` runs its unconditional pass and the guidance's scale governs;
    passing the pipeline's own scale argument (`guidance_scale=`) raises an apg.errors.InputError.
    `space=None` applies the rule in its own space (`guidance.space`); `space="raw"` forces the model's raw
    output. Refusals are apg.errors (InputError, InputTypeError, UnsupportedError), raised before any work.
    Every step passes the rule its context: sigma (apg.schedulers.noise_level) and the step index.
    A guided pipeline pickles and deep-copies (the copy is guided too); `save_pretrained` records the stock class.
    """
    if isinstance(pipe, Guided):  # `pipe = apg.guide(pipe, g)` earlier
        pipe = pipe.pipeline
    if guidance is not None:
        _check(pipe, guidance, space)  # fail here, not at the first call
    elif space is not None:
        _check_space(space)
        raise InputError(f"space={space!r} was passed without a guidance")
    before = _state(pipe)
    _apply(pipe, guidance, space)
    return Guided(pipe, (guidance, space), before)
