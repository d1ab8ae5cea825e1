"""apg through Diffusers' guider slot: classic pipelines that take a `guider` and every ModularPipeline, in x0 space.

A Diffusers guider only ever sees pred_cond and pred_uncond, never the latents or the scheduler, so it cannot
guide in x0. For each call `apg.guide` sets up, three parts with one job each:
- capture: an `ApgGuider` sits in the pipeline's guider slot(s) for the call; it records the predictions the
  pipeline hands it and returns the CFG combination the pipeline expects;
- skip: its `num_conditions` is 1 where the rule does not use the unconditional prediction at the step about to
  run (outside its sigma interval, or w = 1), so the pipeline runs no unconditional pass there;
- guide: `scheduler.step`, shadowed for the call, turns the captured predictions into x0 with the scheduler's own
  coefficients, applies the rule with its step context (sigma, step) and maps back (apg/_x0.py).
The slots hold their own guider objects again when the call ends, whether it returns or raises.

One apg guidance in two slots (Wan 2.2's `guider`/`guider_2`, HunyuanImage's `guider`/`ocr_guider`): the same
ApgGuider fills both, so one rule, one scale and one momentum state run across the switch, as apg does for
classic Wan 2.2.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders import BaseGuidance, ClassifierFreeGuidance
from diffusers.guiders.guider_utils import GuiderOutput
from diffusers.modular_pipelines import ModularPipeline

from ._run import callbacks_outside_runs, guided_call, innermost
from ._skip import skipping_enabled
from ._x0 import guided_output
from .quirks import renorm_to_cond
from .errors import InputTypeError, UnsupportedError
from .guidance import CFG, Guidance
from .schedulers import check_scheduler, noise_level

__all__ = ["ApgGuider", "SLOTS", "QUIRKS", "REFUSED", "PIPELINES", "REFUSED_BY_CHECKS",
           "holds_guider", "check", "run_guided"]

SLOTS = ("guider", "guider_2", "ocr_guider")  # component names Diffusers gives guiders


@dataclass(frozen=True)
class Quirk:
    """What a pipeline does to the guider's result before scheduler.step, so apg can do it to the guided one."""

    what: str  # in words, for the docs
    to_stepped: Callable  # f(prediction, model_output) -> the part of a prediction that is stepped
    post: Callable  # f(guided, pred_cond) -> what is stepped, both already to_stepped


def _first_tokens(prediction, model_output):
    """The first N tokens of [B, M >= N, C] packed tokens, N = model_output's: the image's, not the context's."""
    return prediction[:, : model_output.shape[1]]


_QWEN = Quirk("slices to the latents' tokens, then rescales to the cond prediction's norm per token",
              _first_tokens, renorm_to_cond)

# Pipeline class -> its quirk; every other pipeline must step the guider's result unchanged (checked every step).
QUIRKS: dict[str, Quirk] = {
    "QwenImageModularPipeline": _QWEN,
    "QwenImageEditModularPipeline": _QWEN,
    "QwenImageEditPlusModularPipeline": _QWEN,
    "QwenImageLayeredModularPipeline": _QWEN,
}

# Pipeline class -> why apg does not guide it.
REFUSED: dict[str, str] = {
    "LTX2ModularPipeline": "its guiders combine video and audio x0 predictions, stepped by two schedulers",
    "LTX25ModularPipeline": "its guiders combine video and audio x0 predictions, stepped by two schedulers",
}


@dataclass(frozen=True)
class Listed:
    """A pipeline apg guides through its guider slot(s), as docs/guider.md lists it."""

    slots: tuple[str, ...]  # its guider components; one ApgGuider fills every non-empty one
    tested: bool  # by tests/test_guider_slot.py (a case in tests/tiny_guider.py)
    note: str = ""  # what apg does beyond the shared contract (a quirk's own words come from QUIRKS)


# Pipeline class -> how apg guides it. apg.guide accepts any pipeline holding a guider that is not refused; this
# table is what the docs promise (scripts/readme_tables.py writes it into docs/guider.md).
PIPELINES: dict[str, Listed] = {
    "HunyuanVideo15Pipeline": Listed(("guider",), True, "encodes the negative prompt only if `num_conditions > 1` "
                                     "before the loop: apg reports 2 there unless w = 1"),
    "HunyuanVideo15ImageToVideoPipeline": Listed(("guider",), True),
    "HunyuanImagePipeline": Listed(("guider", "ocr_guider"), True, "one ApgGuider in both slots (tested on the "
                                   "`ocr_guider` path); refused when both are empty (distilled)"),
    "HunyuanImageRefinerPipeline": Listed(("guider",), True),
    "MotifVideoPipeline": Listed(("guider",), True, "reads `num_conditions` before each step's `set_state`: apg's "
                                 "answer does not change at `set_state`"),
    "MotifVideoImage2VideoPipeline": Listed(("guider",), True, "as text-to-video"),
    "StableDiffusionXLModularPipeline": Listed(("guider",), True, "a saved folder also runs in `apg compare "
                                               "--model` and the app (text-to-image)"),
    "StableDiffusion3ModularPipeline": Listed(("guider",), True),
    "WanModularPipeline": Listed(("guider",), True),
    "Wan22ModularPipeline": Listed(("guider", "guider_2"), True, "one rule, scale and momentum state across both "
                                   "experts"),
    "QwenImageModularPipeline": Listed(("guider",), True),
    "ZImageModularPipeline": Listed(("guider",), True, "negates the output before the guider: x0 is read from the "
                                    "negated output, as the scheduler steps it"),
    "LTXModularPipeline": Listed(("guider",), True, "text-to-video blocks"),
    "Flux2KleinModularPipeline": Listed(("guider",), True, "slices its output to the latents' tokens before the "
                                        "guider: nothing to redo"),
    "Flux2ModularPipeline": Listed(("guider",), False, "as Flux2-Klein"),
    "Flux2KleinBaseModularPipeline": Listed(("guider",), False, "as Flux2-Klein"),
    "QwenImageEditModularPipeline": Listed(("guider",), False),
    "QwenImageEditPlusModularPipeline": Listed(("guider",), False),
    "QwenImageLayeredModularPipeline": Listed(("guider",), False),
    "QwenImage21ModularPipeline": Listed(("guider",), False),
    "HunyuanVideo15ModularPipeline": Listed(("guider",), False),
    "ErnieImageModularPipeline": Listed(("guider",), False),
    "AnimaModularPipeline": Listed(("guider",), False),
    "Krea2ModularPipeline": Listed(("guider",), False),
}

# Pipelines refused by apg.guide's general checks rather than by name (for the docs, beside REFUSED).
REFUSED_BY_CHECKS: dict[str, str] = {
    "LTX image-to-video (modular)": "steps an unpacked slice of the guider's result (frames 1:): the per-step check "
                                    "stops the call with a RuntimeError at its first step",
    "Helios, MiniMax H3 (modular)": "their schedulers (`HeliosScheduler`, `MiniMaxH3Scheduler`) are not among apg's "
                                    "supported schedulers",
    "`FluxModularPipeline`, `FluxKontextModularPipeline`, Cosmos, Echo":
        "no guider component (Flux's guidance is distilled into the model): \"holds no guider\"",
}


@contextlib.contextmanager
def _no_experimental_warning():
    """BaseGuidance.__init__ warns 'experimental' on every construction; one guider per call would repeat it."""
    log = logging.getLogger(BaseGuidance.__module__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class ApgGuider(BaseGuidance):
    """A Diffusers guider holding an apg rule; it guides (in the rule's own space) only inside `apg.guide`.

    `ApgGuider(guidance=apg.APG(...))` (or its `to_dict()`) is a registered ConfigMixin, so
    `pipe.update_components(guider=...)` and a `ComponentSpec` accept it; a call that it meets outside
    `apg.guide` raises a RuntimeError that says so, since a guider alone never sees the latents.
    """

    _input_predictions = ["pred_cond", "pred_uncond"]
    # One batch per reported condition, cond first, as Diffusers' CFG guider prepares them.
    prepare_inputs = ClassifierFreeGuidance.prepare_inputs
    prepare_inputs_from_block_state = ClassifierFreeGuidance.prepare_inputs_from_block_state

    @register_to_config
    def __init__(self, guidance: dict | Guidance | None = None):
        with _no_experimental_warning():
            super().__init__()
        if isinstance(guidance, dict):
            guidance = Guidance.from_dict(guidance)
        if guidance is not None and not isinstance(guidance, Guidance):
            raise InputTypeError(f"guidance must be an apg.Guidance or its to_dict(), got {guidance!r}")
        self.guidance = guidance
        self.register_to_config(guidance=None if guidance is None else guidance.to_dict())  # JSON-able
        self._run = None  # the guided call this guider serves

    def _served(self) -> "_GuiderRun":
        if self._run is None:
            raise RuntimeError(
                f"ApgGuider({self.guidance!r}) guides only inside a call set up by apg.guide: a guider never sees the "
                "latents or the scheduler, so it cannot guide in x0 on its own. Use apg.guide(pipe, rule) "
                "(or `with apg.guide(pipe, rule):`) instead of putting an ApgGuider in the guider slot"
            )
        return self._run

    def set_state(self, step, num_inference_steps, timestep):
        super().set_state(step, num_inference_steps, timestep)
        self._served().timestep = timestep

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    @property
    def num_conditions(self) -> int:
        return 2 if self._run is None else self._run.num_conditions()  # None: __repr__ outside a call

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        return self._served().capture(pred_cond, pred_uncond)


class _GuiderRun:
    """State of one guided call: its own copy of the rule, the step count and the predictions of this step."""

    def __init__(self, pipe, guidance: Guidance, space: str):
        self.pipe, self.space = pipe, space
        self.guidance = copy.deepcopy(guidance)  # the caller's object never carries this call's momentum
        self.guidance.reset()
        self.cfg = CFG(guidance.guidance_scale)  # what the guider returns to the pipeline
        self.family = check_scheduler(pipe.scheduler)
        self.quirk = QUIRKS.get(type(pipe).__name__)
        self.step = 0  # scheduler.step calls so far: the rule's `step`
        self.timestep = None  # of the step about to run, from set_state; None before the first
        self.captured = None  # (pred_cond, pred_uncond or None, what the guider returned) of this step
        self.skipping = skipping_enabled()  # read once per call, as the classic path does

    def active(self) -> bool:
        return innermost(self)

    def num_conditions(self) -> int:
        """2, or 1 where the step about to run does not use the unconditional prediction (Guidance.needs_uncond).

        Before the call's first set_state the schedule may not be set yet: 2 unless no step can need it (w = 1),
        since HunyuanVideo 1.5 and Motif encode the negative prompt only then. `apg.set_skipping(False)`: always 2.
        """
        guidance = self.guidance
        if not self.skipping:
            return 2
        if self.timestep is None:
            return 1 if guidance.at_one() else 2
        sigma = None if guidance.interval is None else noise_level(self.pipe.scheduler, self.family,
                                                                   self._next_timestep())
        return 2 if guidance.needs_uncond(sigma, self.step) else 1

    def _next_timestep(self):
        """The timestep of the scheduler.step about to run (Motif asks before that step's set_state)."""
        scheduler = self.pipe.scheduler
        # Set by an earlier step() (or scale_model_input): the index step() will use; DDIM-type schedulers have none.
        if getattr(scheduler, "step_index", None) is not None:
            return scheduler.timesteps[scheduler.step_index]
        return self.timestep  # the first step: its set_state has run (the timestep from before the loop otherwise)

    def capture(self, pred_cond, pred_uncond) -> GuiderOutput:
        if self.captured is not None:
            raise RuntimeError(
                f"{type(self.pipe).__name__} called its guider twice before scheduler.step; apg guides pipelines "
                "that combine one guider result per step"
            )
        pred = pred_cond if pred_uncond is None else self.cfg(pred_cond, pred_uncond)
        self.captured = (pred_cond, pred_uncond, pred)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    def _stepped(self, model_output, returned, pred_cond) -> Quirk | None:
        """The pipeline's quirk (None: it steps the guider's result as is); RuntimeError for an unknown change."""
        name = type(self.pipe).__name__
        if model_output is returned:
            return None
        quirk = self.quirk
        if quirk is not None and model_output.shape == _first_tokens(returned, model_output).shape:
            expected = quirk.post(quirk.to_stepped(returned, model_output), quirk.to_stepped(pred_cond, model_output))
            if torch.allclose(expected, model_output, rtol=1e-5, atol=1e-6):
                return quirk
        raise RuntimeError(
            f"{name} changes the guider's result before scheduler.step in a way apg does not know "
            f"(known: {sorted(QUIRKS)}), so it cannot guide it in x0"
        )

    def guide_output(self, model_output, timestep, sample):
        """Model output whose x0 is the guided x0 (raw space: the guided output itself)."""
        if self.captured is None:
            raise RuntimeError(
                f"{type(self.pipe).__name__} ran scheduler.step without its guider's result for the step; "
                "apg guides pipelines that step what their guider returns"
            )
        (pred_cond, pred_uncond, returned), self.captured = self.captured, None
        quirk = self._stepped(model_output, returned, pred_cond)
        if quirk is not None:
            pred_cond = quirk.to_stepped(pred_cond, model_output)
            pred_uncond = None if pred_uncond is None else quirk.to_stepped(pred_uncond, model_output)
        if pred_cond.shape != model_output.shape or model_output.shape != sample.shape:
            raise RuntimeError(
                f"{type(self.pipe).__name__}: the guider got predictions {tuple(pred_cond.shape)} and scheduler.step "
                f"model_output {tuple(model_output.shape)} for sample {tuple(sample.shape)}; apg guides outputs "
                "shaped like the latents"
            )
        step, self.step = self.step, self.step + 1
        dtype = model_output.dtype
        # pred_uncond None: the skipped pass, which the rule does not read at this step (guided_output's cond_only).
        pred_uncond = None if pred_uncond is None else pred_uncond.to(dtype)
        guided = guided_output(self.guidance, self.space, self.pipe.scheduler, self.family, timestep, sample,
                               pred_cond.to(dtype), pred_uncond, step)
        return guided if quirk is None else quirk.post(guided, pred_cond.to(dtype))


def _slots(pipe) -> dict:
    """Guider slot name -> what it holds (None when empty), for the slots `pipe` declares."""
    # Not DiffusionPipeline.components: it raises for a pipeline whose config and signature disagree.
    declared = pipe._component_specs if isinstance(pipe, ModularPipeline) else getattr(pipe, "config", None)
    if not isinstance(declared, Mapping):
        return {}
    return {name: getattr(pipe, name, None) for name in SLOTS if name in declared}


def holds_guider(pipe) -> bool:
    """Whether `pipe` is guided through its guider slot: a ModularPipeline, or a pipeline with a guider component."""
    return isinstance(pipe, ModularPipeline) or bool(_slots(pipe))


def check(pipe) -> None:
    """apg.errors.UnsupportedError naming why `pipe` cannot be guided through its guider slot; None if it can."""
    name = type(pipe).__name__
    if name in REFUSED:
        raise UnsupportedError(f"{name} is not supported by apg: {REFUSED[name]}")
    if not any(isinstance(g, BaseGuidance) for g in _slots(pipe).values()):
        raise UnsupportedError(
            f"{name} holds no guider in {list(_slots(pipe)) or list(SLOTS)} (a distilled model runs without "
            "guidance); there is no guidance for apg to replace"
        )
    check_scheduler(pipe.scheduler)


def run_guided(pipe, call, guidance: Guidance, space: str, args, kwargs):
    """Run `call(*args, **kwargs)`, a stock `__call__` of `pipe`, guided by `guidance` through its guider slot(s)."""
    run = _GuiderRun(pipe, guidance, space)
    guider = ApgGuider(guidance)
    guider._run = run
    saved = {name: g for name, g in _slots(pipe).items() if isinstance(g, BaseGuidance)}
    state = vars(pipe)  # components live there; DiffusionPipeline.__setattr__ would rewrite the config
    state.update(dict.fromkeys(saved, guider))
    try:
        with guided_call(run, pipe.scheduler):
            return call(*args, **callbacks_outside_runs(kwargs))
    finally:
        state.update(saved)
