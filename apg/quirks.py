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
    stepped(pipe, pred, model_output, sample)  what the pipeline steps of a prediction (sample: the latents stepped)
    after(run, guided, pred_cond)           what the pipeline does after its CFG line, done to apg's result too
    both_passes(run)                        this step runs every pass whatever the rule needs (skipping reads it)

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

__all__ = ["Quirk", "Rescale", "SecondExpert", "DynamicScale", "SteppedPart", "SteppedWithLatents", "Refuse",
           "Negated", "RenormToCond", "Truncation", "Outputs", "StepsBothHalves", "CondPlus", "BatchDims", "ZeroOutput",
           "Conditioners", "ENTRIES", "SKIPPING", "renorm_to_cond"]

ENTRIES = "entries"  # a BatchDims value: a list with one entry per sample (Z-Image)
FOLDED = "folded"  # a BatchDims value: [batch * k, ...], each sample's k rows together (AnimateDiff's frames)


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

    def stepped(self, pipe, pred, model_output, sample):
        return pred

    def after(self, run, guided, pred_cond):
        return guided

    def both_passes(self, run) -> bool:
        return False


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

    def steps(self, run) -> int:
        """n: the call's step count, as the pipeline counts it."""
        return len(run.pipe.scheduler.timesteps)

    def scale(self, run, module, timestep, scale):
        if not run.call_value(self.arg):
            return scale
        n, t = self.steps(run), timestep.item() if torch.is_tensor(timestep) else timestep
        return 1 + scale * ((1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2)

    def scale_varies(self, run):
        return bool(run.call_value(self.arg))


@dataclass(frozen=True)
class SteppedPart(Quirk):
    """The pipeline steps `part(pipe, output, model_output)`, not the output itself (LTX image-to-video)."""

    part: Callable

    def describe(self):
        return f"guides only the stepped part of the output (`{self.part.__name__}`)"

    def stepped(self, pipe, pred, model_output, sample):
        return self.part(pipe, pred, model_output)


@dataclass(frozen=True)
class SteppedWithLatents(Quirk):
    """The pipeline steps `formula(output, x, s)`, an affine map of the output built from the latents x being
    stepped and the scheduler's sigma s of the step (EDM preconditioning outside the model, an x0 prediction
    turned into a velocity).

    An affine map carries the CFG line over to what is stepped; apg reads the x0 of what is stepped with the
    scheduler's own coefficients, as for any pipeline.
    """

    formula: Callable

    def describe(self):
        return f"steps `{self.formula.__name__}` of the output and the latents"

    def stepped(self, pipe, pred, model_output, sample):
        from .schedulers import current_sigma  # not at import: it loads Diffusers, which `import apg` does not

        return self.formula(pred, sample, current_sigma(pipe.scheduler))


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
    None (not per-sample: rotary embeddings), ENTRIES (a list with one entry per sample) or FOLDED (dim 0 holds
    k rows per sample, sample-major: per-frame inputs [batch * frames, ...])."""

    dims: dict

    def __post_init__(self):
        for name, where in self.dims.items():
            if not (where is None or where in (ENTRIES, FOLDED) or
                    (isinstance(where, int) and not isinstance(where, bool))):
                raise ValueError(f"BatchDims[{name!r}] must be an int, None, {ENTRIES!r} or {FOLDED!r}, got {where!r}")

    def __hash__(self):
        return hash(tuple(sorted(self.dims.items(), key=repr)))

    def describe(self):
        return "skipping cuts " + ", ".join(f"`{name}` " + ("as it is" if where is None else "per entry"
                                            if where == ENTRIES else "per block of rows" if where == FOLDED
                                            else f"along dim {where}")
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
@dataclass(frozen=True)
class RefusedState(Quirk):
    """The pipeline was put in a state (its attribute `attr` is true) whose calls apg cannot reproduce: refused."""

    attr: str
    reason: str

    def describe(self):
        return f"refused: `{self.attr}`"

    def start(self, run):
        if getattr(run.pipe, self.attr, False):
            raise UnsupportedError(f"{type(run.pipe).__name__} with {self.attr} is not supported by apg: {self.reason}")


# AnimateDiff's unet (and ControlNet) inputs per frame: [2 * frames, ...], the uncond video's frames first. FreeInit
# (enable_free_init) samples the video again from reset timesteps, as many times as it has iterations.
ANIMATEDIFF = (
    BatchDims({"encoder_hidden_states": FOLDED, "down_block_additional_residuals": FOLDED,
               "mid_block_additional_residual": FOLDED}),
    RefusedState("free_init_enabled", "FreeInit samples the video again from reset timesteps for each iteration, "
                 "and one call's momentum and step count would run across them"),
)


@dataclass(frozen=True)
class DynamicScaleAfterStrength(DynamicScale):
    """CogVideoX video-to-video's dynamic scale: n is the steps `strength` leaves, min(int(N * strength), N)."""

    strength_arg: str = "strength"

    def describe(self):
        return f"`{self.arg}` reproduced, counting the steps `{self.strength_arg}` leaves"

    def steps(self, run):
        total = len(run.pipe.scheduler.timesteps)
        return min(int(total * run.call_value(self.strength_arg)), total)


@dataclass(frozen=True)
class NegatedStep(Quirk):
    """The pipeline steps -output with per-token timesteps, whose step has dt of the opposite sign (LTX condition):
    the output is guided as it is (x0 = sample - sigma * output), and negated after, as the pipeline does."""

    def describe(self):
        return "steps the negated guided output through per-token timesteps (dt of the opposite sign)"

    def after(self, run, guided, pred_cond):
        return -guided


LTX_CONDITIONED = ("conditioned tokens are stepped at their own timesteps (0 for a hard condition), which apg's x0 "
                   "reading at the step's sigma does not follow")
# CogVideoX's image_rotary_emb: a (cos, sin) pair of [tokens, dim], not per sample.
COGVIDEOX_ROTARY = BatchDims({"image_rotary_emb": None})


def _frames_first_out_channels(denoiser, first):
    """Zeros [B, F, out_channels, H, W] for a frames-first input with condition channels (CogVideoX I2V, Fun)."""
    return first.new_zeros((*first.shape[:2], denoiser.config.out_channels, *first.shape[3:]))


COGVIDEOX_CONDITIONED = ZeroOutput(_frames_first_out_channels)
# -- end of family animate --

# -- family qwen --
def target_tokens(pipe, output, model_output):
    """The last tokens of a packed [B, N, C] output, as many as the latents have: Qwen-Image 2.1 prepends its
    condition images' tokens to the noise and steps the rest."""
    return output[:, -model_output.shape[1]:]


@dataclass(frozen=True)
class FirstStepCache(Quirk):
    """The pipeline fills a KV cache of its condition tokens at the first step from each pass and reads it later
    (call argument `arg`, on where the denoiser's config sets `flag`): that step runs both passes."""

    arg: str = "use_kv_cache"
    flag: str = "causal_condition"

    def describe(self):
        return f"both passes at the first step while `{self.arg}` caches its condition tokens"

    def both_passes(self, run):  # a pass skipped at step 0 would leave its cache empty for the later steps
        denoiser = getattr(run.pipe, run.spec.denoiser)
        return run.step == 0 and bool(run.call_value(self.arg)) and getattr(denoiser.config, self.flag, False)


@dataclass(frozen=True)
class ClampedRenormToCond(Quirk):
    """After its CFG line the pipeline scales the result by ||c|| / (||result|| + 1e-8) over the last dim, clamped to
    [call argument `min_arg`, 1], where call argument `arg` is on (LongCat-Image): it only ever shrinks the result."""

    arg: str = "enable_cfg_renorm"
    min_arg: str = "cfg_renorm_min"

    def describe(self):
        return f"renormalised towards the cond prediction's norm, factor clamped to [`{self.min_arg}`, 1], " \
               f"switched by `{self.arg}`"

    def after(self, run, guided, pred_cond):
        if not run.call_value(self.arg):
            return guided
        norm = torch.norm(guided, dim=-1, keepdim=True) + 1e-8  # the pipeline's own guard, not renorm_to_cond's
        factor = torch.norm(pred_cond, dim=-1, keepdim=True) / norm
        return guided * factor.clamp(min=run.call_value(self.min_arg), max=1.0)


@dataclass(frozen=True)
class RenormToCondOver(Quirk):
    """After its CFG line the pipeline rescales the result to the cond prediction's norm over dim `dim`, the
    result's norm clamped at `eps` (JoyImage: over the channels C of its [B, items, C, T, H, W] latents)."""

    dim: int = 2
    eps: float = 1e-6

    def describe(self):
        return f"renormalised to the cond prediction's norm over dim {self.dim}"

    def after(self, run, guided, pred_cond):
        norm = torch.norm(guided, dim=self.dim, keepdim=True).clamp_min(self.eps)
        return guided * (torch.norm(pred_cond, dim=self.dim, keepdim=True) / norm)


JOY_IMAGE = ("its reference latents ride in the stepped tensor (restored after each step), so a nonlinear rule "
             "would see their predictions too")

GLM_IMAGE = ("it runs its transformer on the condition images before the loop (to fill its KV cache), a denoiser call "
             "that is no pass of the CFG line")
# -- end of family qwen --

# -- family flux --
@dataclass(frozen=True)
class StepDistilled(Quirk):
    """On a step-distilled checkpoint (pipeline config `attr` set) the pipeline runs no CFG: apg refuses the call."""

    attr: str = "is_distilled"

    def describe(self):
        return f"refused on step-distilled checkpoints (`config.{self.attr}`), where the pipeline runs no CFG"

    def start(self, run):
        if getattr(run.pipe.config, self.attr, False):
            raise UnsupportedError(
                f"{type(run.pipe).__name__} is step-distilled (config.{self.attr}=True): it runs no classifier-free "
                "guidance, so apg has nothing to guide; call apg.guide(pipe, None) and run it stock"
            )


@dataclass(frozen=True)
class NormalizeStd(Quirk):
    """With the call's `arg` set, the pipeline mixes its CFG result g into 0.7 g std(c) / std(g) + 0.3 g (Bria)."""

    arg: str = "normalize"

    def describe(self):
        return f"`{self.arg}` (0.7 of the result taken to the cond prediction's std) re-applied to the guided output"

    def after(self, run, guided, pred_cond):
        if not run.call_value(self.arg):
            return guided
        std = guided.std().clamp(min=torch.finfo(guided.dtype).tiny)  # a zero result (CFG-Zero*) stays zero
        return guided * (0.7 * (pred_cond.std() / std)) + 0.3 * guided  # the pipeline's own order of operations


@dataclass(frozen=True)
class Clip(Quirk):
    """With the call's `arg` set, the pipeline clips its CFG result to [-arg, arg] (Bria)."""

    arg: str = "clip_value"

    def describe(self):
        return f"`{self.arg}` clipping re-applied to the guided output"

    def after(self, run, guided, pred_cond):
        value = run.call_value(self.arg)
        return guided.clip(-value, value) if value else guided


# -- end of family flux --

# -- family video_more --
_CHRONO_REASONING = "it drops latent frames mid-sampling, so the guidance's running state would change shape"


def kandinsky5_zeros(denoiser, first):
    """Zeros [B, T, H, W, out_visual_dim] for Kandinsky 5's channels-last input [latents, condition, mask]."""
    return first.new_zeros((*first.shape[:-1], denoiser.config.out_visual_dim))


def kandinsky5_i2v_stepped(pipe, output, model_output):
    """Kandinsky5I2VPipeline steps frames 1: of its channels-last [B, T, H, W, C] output; frame 0 is the image."""
    return output[:, 1:]


def hunyuan_i2v_stepped(pipe, output, model_output):
    """HunyuanVideoImageToVideoPipeline with `image_condition_type="token_replace"` steps frames 1: of
    [B, C, F, H, W]; frame 0 is the image's latents. "latent_concat" steps the whole output."""
    return output[:, :, 1:] if pipe.transformer.config.image_condition_type == "token_replace" else output


def sana_i2v_stepped(pipe, output, model_output):
    """SanaImageToVideoPipeline steps frames 1: of [B, C, F, H, W]; frame 0, the image, sits at timestep 0."""
    return output[:, :, 1:]


@dataclass(frozen=True)
class OneSegment(Quirk):
    """The pipeline denoises `segments(run)` segments in one call, each from fresh noise on a reset scheduler;
    apg guides a call of one segment only (one guidance state would run across the segments' trajectories)."""

    segments: Callable

    def describe(self):
        return "calls of more than one segment refused"

    def start(self, run):
        count = self.segments(run)
        if count > 1:
            raise UnsupportedError(
                f"{type(run.pipe).__name__} would denoise {count} segments in this call, each from fresh noise; apg "
                "guides one segment per call (its guidance state, momentum included, would run across them)"
            )


def wan_animate_segments(run):
    """WanAnimatePipeline's segment count: pose frames padded to whole segments of the effective length."""
    frames, prev = len(run.call_value("pose_video")), run.call_value("prev_segment_conditioning_frames")
    effective = run.call_value("segment_frame_length") - prev
    last = (frames - prev) % effective
    return (frames + (effective - last if last else 0)) // effective  # its __call__'s num_segments


def framepack_sections(run):
    """HunyuanVideoFramepackPipeline's latent sections: windows of `latent_window_size` latent frames."""
    window = (run.call_value("latent_window_size") - 1) * run.pipe.vae_scale_factor_temporal + 1
    return max(1, (run.call_value("num_frames") + window - 1) // window)  # its __call__'s num_latent_sections
# -- end of family video_more --

# -- family misc --
@dataclass(frozen=True)
class RefuseGiven(Quirk):
    """Call argument `arg` (an image, a video) given at all: apg cannot reproduce what the pipeline then does."""

    arg: str
    reason: str

    def describe(self):
        return f"refused: `{self.arg}`"

    def start(self, run):
        if run.call_value(self.arg) is not None:  # named, not shown: the value is a tensor or an image
            raise UnsupportedError(f"{self.arg} is not supported by apg with {type(run.pipe).__name__}: {self.reason}")


def cosmos2_stepped(output, latents, sigma):
    """Cosmos 2: (x - x0) / s, x0 = c_skip x + c_out F with t = s / (s + 1), c_skip = 1 - t, c_out = -t (x0 rounded
    to F's dtype, as it does)."""
    t = sigma / (sigma + 1)
    return (latents - ((1 - t) * latents + (-t) * output.float()).to(output.dtype)) / sigma


def prx_pixel_stepped(output, latents, sigma):
    """PRXPixel predicts x0 and steps (x - x0) / (t / 1000), that is s, clamped at 0.05."""
    return (latents - output) / sigma.clamp(min=0.05)


def latent_upscale_stepped(output, latents, sigma):
    """The SD latent upscaler steps x0 = x / (s^2 + 1) + s / sqrt(s^2 + 1) F (Karras et al. 2022, table 1, sigma_data
    = 1), F without its last (variance) channel."""
    return latents / (sigma**2 + 1) + sigma / (sigma**2 + 1) ** 0.5 * output[:, : latents.shape[1]]


# -- end of family misc --

# -- family extra --
# -- end of family extra --
