"""Pipelines that step something other than the model output, or in another frame of a FlowMatch schedule, against
the x0 their own source writes.

- Mochi and LongCat audio run FlowMatch Euler with inverted sigmas (s runs 0 -> 1, sample = s x0 + (1 - s) eps,
  the model predicts x0 - eps): the x0 handed to the rule is sample + (1 - s) v_cond, its noise level (1 - s) / s;
- Cosmos 2 steps (x - x0) / s on Karras sigmas from 80 (the EDM frame sample = x0 + s eps), x0 = c_skip x + c_out F
  with t = s / (s + 1), c_skip = 1 - t, c_out = -t: the x0 handed to the rule is that of the cond pass, its
  noise level s itself;
- PRXPixel's transformer predicts x0 and it steps (x - x0) / max(s, 0.05): down to s = 0.05 the x0 handed to the
  rule is its cond output;
- the SD latent upscaler steps x0 = x / (s^2 + 1) + s / sqrt(s^2 + 1) F (its UNet's variance channel dropped) with
  Euler predicting "sample": that is the x0 handed to the rule, its noise level s.

Each reference is written here in float64 from the pipeline's source, from the denoiser's cond output (a forward
hook of the test's own) and the latents and sigma of each scheduler.step. A registration with a wrong x0 formula
raises at the first step (run-time verification).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from tiny_registry import TINY

import apg
from apg.quirks import CondPlus, SteppedWithLatents
from apg.registry import spec_for

pytestmark = pytest.mark.usefixtures("single_thread")
W = 4.0
SEEN = []  # (x0 of the cond prediction, noise level) handed to the rule at each guided step


class Recording(apg.APG):
    def __call__(self, pred_cond, pred_uncond, **context):
        SEEN.append((pred_cond.detach().double(), context["sigma"]))
        return super().__call__(pred_cond, pred_uncond, **context)


def _case(key):
    if key not in TINY:  # an older Diffusers (0.41 under Python 3.10) lacks the newest classes
        pytest.skip(f"the installed Diffusers has no {key}")
    return TINY[key]


def _trace(key, monkeypatch):
    """Run case `key` guided by Recording; per step: (cond output of the denoiser, latents, scheduler sigma)."""
    case = _case(key)
    pipe = case.build()
    outputs, steps = [], []
    getattr(pipe, spec_for(pipe).denoiser).register_forward_hook(
        lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out.sample))
    cls = type(pipe.scheduler)
    original = cls.step

    @functools.wraps(original)
    def step(self, model_output, timestep, sample, *args, **kwargs):
        if self.step_index is None:
            self._init_step_index(timestep)
        # separate passes: cond first; one batched pass: [uncond, cond]
        cond = outputs[0] if len(outputs) == 2 else outputs[-1].chunk(2)[1]
        outputs.clear()
        steps.append((cond.double(), sample.double(), float(self.sigmas[self.step_index])))
        return original(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(cls, "step", step)
    SEEN.clear()
    with apg.guide(pipe, Recording(W, eta=0.0, momentum=-0.5)):
        case.run(pipe)
    assert len(SEEN) == len(steps) > 1
    return steps


def _close(ours, theirs, what):
    assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, theirs.abs().max()), what


@pytest.mark.parametrize("key", ["MochiPipeline", "LongCatAudioDiTPipeline"])
def test_inverted_sigmas(key, monkeypatch):
    steps = _trace(key, monkeypatch)
    assert steps[0][2] == 0.0  # pure noise: s = 0
    for i, ((x0, sigma), (v, x, s)) in enumerate(zip(SEEN, steps)):
        _close(x0, x + (1 - s) * v, f"x0 at step {i}")
        assert sigma == (math.inf if s == 0 else pytest.approx((1 - s) / s, rel=1e-6)), f"noise level at step {i}"


def test_cosmos2_edm_preconditioning(monkeypatch):
    steps = _trace("Cosmos2TextToImagePipeline", monkeypatch)
    assert steps[0][2] == pytest.approx(80.0)
    for i, ((x0, sigma), (f, x, s)) in enumerate(zip(SEEN, steps)):
        t = s / (s + 1)
        _close(x0, (1 - t) * x - t * f, f"x0 at step {i}")
        assert sigma == pytest.approx(s, rel=1e-6), f"noise level at step {i}"


def test_prx_pixel_x0_prediction(monkeypatch):
    steps = _trace("PRXPixelPipeline", monkeypatch)
    assert steps[0][2] >= 0.05 > steps[-1][2]  # both sides of its clamp
    for i, ((x0, _), (f, x, s)) in enumerate(zip(SEEN, steps)):
        # it steps v = (x - F) / max(s, 0.05): the scheduler's x0, x - s v, is F down to s = 0.05
        _close(x0, f if s >= 0.05 else x - s / 0.05 * (x - f), f"x0 at step {i}")


def test_latent_upscaler_preconditioning(monkeypatch):
    steps = _trace("StableDiffusionLatentUpscalePipeline", monkeypatch)
    for i, ((x0, sigma), (f, x, s)) in enumerate(zip(SEEN, steps)):
        _close(x0, x / (s**2 + 1) + s / math.sqrt(s**2 + 1) * f[:, :4], f"x0 at step {i}")
        assert sigma == pytest.approx(s, rel=1e-6), f"noise level at step {i}"


def test_a_wrong_x0_formula_raises_at_the_first_step():
    import diffusers

    case = _case("Cosmos2TextToImagePipeline")

    class Cosmos2Flipped(diffusers.Cosmos2TextToImagePipeline):
        """Registered with c_out = +t (the sign flipped); its __call__ (the stock one) writes -t."""

    def flipped(output, latents, sigma):
        t = sigma / (sigma + 1)
        return (latents - ((1 - t) * latents + t * output.float()).to(output.dtype)) / sigma

    apg.register_pipeline(Cosmos2Flipped, denoiser="transformer", batch="separate",
                          quirks=(CondPlus(), SteppedWithLatents(flipped)))
    pipe = Cosmos2Flipped(**case.build().components)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(RuntimeError, match=r"^Cosmos2Flipped: at its first guided step"):
        case.run(apg.guide(pipe, apg.APG(W)))
