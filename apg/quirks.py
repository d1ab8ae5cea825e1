"""What one pipeline does differently from the plain CFG line: one named quirk per departure.

A registered pipeline (apg/registry.py) is a small core (denoiser, batch pattern, scale argument, negative-prompt
argument) plus quirks. Each quirk plugs into fixed points of a guided call (apg/_run.py), every one a no-op by
default:

    start(run)                              once per call: refuse an argument, check a value
    modules(pipe)                           more denoisers whose outputs are captured (a second expert)
    captured(pipe, output)                  each captured denoiser output, as the pipeline reads it
    unguided(run)                           this step runs without its uncond pass, as stock
    scale(run, module, timestep, scale)     the CFG weight of this step, from the call's
    scale_varies(run)                       whether scale() may change the weight within this call
    stepped(pipe, pred, model_output)       the part of a prediction that is stepped
    after(run, guided, pred_cond)           what the pipeline does after its CFG line, done to apg's result too

Skipping (apg/_skip.py) reads three declarations: BatchDims, ZeroOutput, Conditioners. A call's arguments are
read through `run.call_value(name)`: the value passed, else the default in the pipeline's signature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import UnsupportedError
from .guidance import _real

__all__ = ["Quirk", "Rescale", "SecondExpert", "DynamicScale", "SteppedPart", "Refuse", "Negated", "RenormToCond",
           "Truncation", "Outputs", "StepsBothHalves", "CondPlus", "BatchDims", "ZeroOutput", "Conditioners",
           "ENTRIES", "SKIPPING", "renorm_to_cond"]

ENTRIES = "entries"  # a BatchDims value: a list with one entry per sample (Z-Image)


def renorm_to_cond(guided, pred_cond):
    """guided * ||pred_cond|| / ||guided|| over the last dim, as Qwen-Image and Lumina2 rescale their CFG result.

    A zero `guided` (CFG-Zero*'s zeroed steps) stays zero rather than 0/0.
    """
    norm = torch.norm(guided, dim=-1, keepdim=True)
    return guided * (torch.norm(pred_cond, dim=-1, keepdim=True) / norm.clamp(min=torch.finfo(norm.dtype).tiny))


class Quirk:
    """One way a pipeline departs from the plain CFG line; `describe()` is its line in docs/pipelines.md."""

    def describe(self) -> str:
        raise NotImplementedError

    def start(self, run) -> None:
        pass

    def modules(self, pipe) -> tuple:
        return ()

    def captured(self, pipe, output):
        return output

    def unguided(self, run) -> bool:
        return False

    def scale(self, run, module, timestep, scale):
        return scale

    def scale_varies(self, run) -> bool:
        return False

    def stepped(self, pipe, pred, model_output):
        return pred

    def after(self, run, guided, pred_cond):
        return guided


@dataclass(frozen=True)
class Rescale(Quirk):
    """Lin et al.'s rescale (`guidance_rescale`, read from the pipeline attribute `attr`) after the CFG line."""

    attr: str = "guidance_rescale"

    def describe(self):
        return f"`{self.attr}` re-applied to the guided output"

    def after(self, run, guided, pred_cond):
        rescale = getattr(run.pipe, self.attr)
        if rescale > 0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, pred_cond, guidance_rescale=rescale)
        return guided


@dataclass(frozen=True)
class SecondExpert(Quirk):
    """A second denoiser for the low-noise steps (Wan 2.2), scaled by `scale_arg` where the call passes it.

    One rule and one momentum state run across the switch; only the weight changes.
    """

    denoiser: str = "transformer_2"
    scale_arg: str | None = "guidance_scale_2"

    def describe(self):
        scaled = f", its steps scaled by `{self.scale_arg}`" if self.scale_arg else ""
        return f"second expert `{self.denoiser}` hooked too{scaled}"

    def _scale_2(self, run):
        value = run.call_value(self.scale_arg) if self.scale_arg else None
        return None if value is None else _real(self.scale_arg, value)

    def start(self, run):
        self._scale_2(run)  # checked once, before any model runs (the stock call checks it too)

    def modules(self, pipe):
        second = getattr(pipe, self.denoiser, None)
        return () if second is None else (second,)

    def scale(self, run, module, timestep, scale):
        if module is not getattr(run.pipe, self.denoiser, None):
            return scale
        scale_2 = self._scale_2(run)
        return scale if scale_2 is None else scale_2

    def scale_varies(self, run):
        return self._scale_2(run) not in (None, run.scale)


@dataclass(frozen=True)
class DynamicScale(Quirk):
    """CogVideoX's dynamic scale, on when the call sets `arg`: w_t = 1 + w (1 - cos(pi ((n - t) / n) ** 5)) / 2."""

    arg: str = "use_dynamic_cfg"

    def describe(self):
        return f"`{self.arg}` reproduced"

    def scale(self, run, module, timestep, scale):
        if not run.call_value(self.arg):
            return scale
        n, t = len(run.pipe.scheduler.timesteps), timestep.item() if torch.is_tensor(timestep) else timestep
        return 1 + scale * ((1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2)

    def scale_varies(self, run):
        return bool(run.call_value(self.arg))


@dataclass(frozen=True)
class SteppedPart(Quirk):
    """The pipeline steps `part(pipe, output, model_output)`, not the output itself (LTX image-to-video)."""

    part: Callable

    def describe(self):
        return f"guides only the stepped part of the output (`{self.part.__name__}`)"

    def stepped(self, pipe, pred, model_output):
        return self.part(pipe, pred, model_output)


@dataclass(frozen=True)
class Refuse(Quirk):
    """Call argument `arg` at a value other than its default: apg cannot reproduce the pipeline, so it refuses."""

    arg: str
    reason: str

    def describe(self):
        return f"refused: `{self.arg}`"

    def start(self, run):
        value = run.call_value(self.arg)
        if value != run.call_default(self.arg):
            raise UnsupportedError(
                f"{self.arg}={value!r} is not supported by apg with {type(run.pipe).__name__}: {self.reason}"
            )


@dataclass(frozen=True)
class Negated(Quirk):
    """The pipeline steps -output (HiDream, Lumina2, Z-Image): the x0 formula reads what is stepped."""

    def describe(self):
        return "steps the negated output (x0 read from what is stepped)"

    def captured(self, pipe, output):
        return -output


@dataclass(frozen=True)
class RenormToCond(Quirk):
    """After its CFG line the pipeline rescales the result to the cond prediction's norm over the last dim
    (Qwen-Image per token, Lumina2 per row); `arg` switches it per call."""

    arg: str | None = None

    def describe(self):
        return "renormalised to the cond prediction's norm" + (f", switched by `{self.arg}`" if self.arg else "")

    def after(self, run, guided, pred_cond):
        return renorm_to_cond(guided, pred_cond) if self.arg is None or run.call_value(self.arg) else guided


@dataclass(frozen=True)
class Truncation(Quirk):
    """Steps with (i + 1) / n > the call's `arg` run no uncond pass and step the cond prediction (Lumina2)."""

    arg: str = "cfg_trunc_ratio"

    def describe(self):
        return f"`{self.arg}` truncation reproduced"

    def unguided(self, run):
        ratio = run.call_value(self.arg)
        steps = len(run.pipe.scheduler.timesteps)  # Lumina2's count once it passes its sigmas
        return ratio is not None and (run.step + 1) / steps > ratio


@dataclass(frozen=True)
class Outputs(Quirk):
    """The denoiser's output is not one batched tensor: `batched(pipe, output)` makes it one, as the pipeline does."""

    batched: Callable

    def describe(self):
        return f"outputs batched by `{self.batched.__name__}`"

    def captured(self, pipe, output):
        return self.batched(pipe, output)


@dataclass(frozen=True)
class StepsBothHalves(Quirk):
    """The pipeline steps the latents of both halves with the same guided result (DiT)."""

    def describe(self):
        return "steps the latents of both halves"

    def after(self, run, guided, pred_cond):
        return torch.cat([guided, guided])


@dataclass(frozen=True)
class CondPlus(Quirk):
    """The pipeline writes c + s (c - u): CFG at w = s + 1, so apg's weight w is its scale w - 1."""

    def describe(self):
        return "written c + s (c - u): apg's w is the pipeline's s + 1"


@dataclass(frozen=True)
class BatchDims(Quirk):
    """Denoiser arguments whose samples are not along dim 0, for skipping's cond-half calls: name -> the dim,
    None (not per-sample: rotary embeddings), or ENTRIES (a list with one entry per sample)."""

    dims: dict

    def __post_init__(self):
        for name, where in self.dims.items():
            if not (where is None or where == ENTRIES or (isinstance(where, int) and not isinstance(where, bool))):
                raise ValueError(f"BatchDims[{name!r}] must be an int, None or {ENTRIES!r}, got {where!r}")

    def __hash__(self):
        return hash(tuple(sorted(self.dims.items(), key=repr)))

    def describe(self):
        return "skipping cuts " + ", ".join(f"`{name}` " + ("as it is" if where is None else "per entry"
                                            if where == ENTRIES else f"along dim {where}")
                                            for name, where in self.dims.items())


@dataclass(frozen=True)
class ZeroOutput(Quirk):
    """`zeros(denoiser, first_argument)`: what the denoiser returns at a step that needs no model, where zeros
    shaped like its first argument are not (learned-sigma channels, inpainting's extra input channels)."""

    zeros: Callable

    def describe(self):
        return f"skipped model calls return `{self.zeros.__name__}`"


@dataclass(frozen=True)
class Conditioners(Quirk):
    """Modules the pipeline runs on the same [uncond, cond] batch before the denoiser (a ControlNet): skipping
    runs them on the cond half too."""

    names: tuple

    def __init__(self, *names: str):
        object.__setattr__(self, "names", names)

    def describe(self):
        return "skipping cuts " + ", ".join(f"`{name}`" for name in self.names) + " to the cond half too"


SKIPPING = (BatchDims, ZeroOutput, Conditioners)  # declarations for apg/_skip.py, not departures from the CFG line


# Quirks added for issue 17's families, one section each.
# -- family sd_more --
@dataclass(frozen=True)
class RescaleArg(Quirk):
    """Lin et al.'s rescale after the CFG line, from the call argument `arg`: the pipeline keeps no attribute for
    it (SDXL ControlNet inpainting), so Rescale cannot read it."""

    arg: str = "guidance_rescale"

    def describe(self):
        return f"`{self.arg}` re-applied to the guided output"

    def after(self, run, guided, pred_cond):
        rescale = run.call_value(self.arg)
        if rescale > 0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, pred_cond, guidance_rescale=rescale)
        return guided


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
