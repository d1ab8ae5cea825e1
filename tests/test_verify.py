"""Run-time verification (apg/_verify.py): a pipeline whose own CFG combination is not the registered one raises
at its first guided step, before that step is taken, naming the class and what differed; a faithful one runs.

Subclasses of StableDiffusionPipeline (one batched pass, `[uncond, cond]`) and FluxPipeline (two passes) are
declared here the way a user would, each with a registration that contradicts what its __call__ does.
"""

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline
from tiny_pipelines import FAMILIES, call, rel_diff

import apg
from apg.quirks import CondPlus, Rescale
from apg.registry import spec_for

pytestmark = pytest.mark.usefixtures("single_thread")
W = 4.0


def _tiny(family, cls):
    """The tiny pipeline of `family` as an instance of the subclass `cls` (same components)."""
    pipe = cls(**FAMILIES[family][0]().components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_swapped_halves_raise_before_the_first_step():
    class Swapped(StableDiffusionPipeline):
        """Registered as [cond, uncond]; its __call__ (the stock one) batches [uncond, cond]."""

    apg.register_pipeline(Swapped, denoiser="unet", batch="cond_first")
    pipe = apg.guide(_tiny("sd", Swapped), apg.APG(W))
    taken = []
    with pytest.raises(RuntimeError, match=r"^Swapped: .*the halves are the other way round"):
        call(pipe, "sd", 3, callback_on_step_end=lambda p, i, t, k: taken.append(i) or k)
    assert taken == []  # not one step was taken


def test_an_unregistered_rescale_raises():
    class NoRescale(StableDiffusionPipeline):
        """Registered without the Rescale quirk its __call__ applies (guidance_rescale)."""

    apg.register_pipeline(NoRescale, denoiser="unet", batch="uncond_first")
    pipe = apg.guide(_tiny("sd", NoRescale), apg.APG(W))
    call(pipe, "sd", 3)  # guidance_rescale=0: the plain line, as registered
    with pytest.raises(RuntimeError, match=r"^NoRescale: .*norm ratio .* \(a rescale or post-processing that is not"):
        call(pipe, "sd", 3, guidance_rescale=0.7)


def test_another_weight_is_named():
    class Shifted(StableDiffusionPipeline):
        """Registered as c + s (c - u) (CondPlus: weight s + 1); its __call__ writes u + s (c - u)."""

    apg.register_pipeline(Shifted, denoiser="unet", batch="uncond_first", quirks=(CondPlus(),))
    pipe = apg.guide(_tiny("sd", Shifted), apg.CFG(W))
    with pytest.raises(RuntimeError, match=r"^Shifted: .*it combines at weight 4, not 5"):
        call(pipe, "sd", 3)


@pytest.mark.parametrize("family, cls, extra", [
    ("sd", StableDiffusionPipeline, {"guidance_rescale": 0.7}),
    ("flux", FluxPipeline, {}),
])
def test_a_faithful_subclass_runs_as_its_base(family, cls, extra):
    class Faithful(cls):
        """A user's subclass that leaves the CFG line alone: it inherits the stock registration."""

        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    pipe = _tiny(family, Faithful)
    stock = call(pipe, family, 3, **extra, **{spec_for(pipe).scale_arg: W})
    with apg.guide(pipe, apg.APG(W, eta=1.0, norm_threshold=0.0, momentum=0.0)):
        assert rel_diff(call(pipe, family, 3, **extra), stock) <= 1e-4


def test_a_registered_rescale_is_verified():
    class WithRescale(StableDiffusionPipeline):
        pass

    apg.register_pipeline(WithRescale, denoiser="unet", batch="uncond_first", quirks=(Rescale("guidance_rescale"),))
    pipe = apg.guide(_tiny("sd", WithRescale), apg.APG(W))
    call(pipe, "sd", 3, guidance_rescale=0.7)


def test_verification_runs_once_per_call(monkeypatch):
    from apg import _run

    checks = []
    check = _run.check_combination
    monkeypatch.setattr(_run, "check_combination", lambda *a: checks.append(1) or check(*a))
    pipe = apg.guide(FAMILIES["sd"][0](), apg.APG(W))
    call(pipe, "sd", 3)
    call(pipe, "sd", 3)
    assert checks == [1, 1]


def test_check_combination_tolerates_rounding_only():
    from apg._verify import check_combination

    generator = torch.Generator().manual_seed(0)
    c, u = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    same = lambda g, _: g  # noqa: E731
    check_combination("P", u + W * (c - u), c, u, W, same)  # float32 rounding of the same line
    with pytest.raises(RuntimeError, match="relative difference"):
        check_combination("P", (u + W * (c - u)) * (1 + 1e-4), c, u, W, same)
    half = (u + W * (c - u)).half()
    check_combination("P", half, c.half(), u.half(), W, same)  # half precision: its own rounding
    # a line run in bfloat16 and cast to float32 latents: the denoiser's dtype rounds it
    c16, u16 = c.bfloat16(), u.bfloat16()
    cast = (u16 + W * (c16 - u16)).float()
    with pytest.raises(RuntimeError):
        check_combination("P", cast, c16.float(), u16.float(), W, same)
    check_combination("P", cast, c16.float(), u16.float(), W, same, computed_in=torch.bfloat16)
