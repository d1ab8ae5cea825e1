"""Every class in the tiny registry (tests/tiny_registry.py), guided through apg.guide: one parametrized case each.

- parity: APG(eta=1, r=0, beta=0) equals the stock pipeline at the scale that means the same CFG weight (1e-4);
- the hook guides: a nonlinear APG (eta=0, momentum) differs from CFG at the same weight;
- x0: the cond x0 handed to the rule at every guided step equals the scheduler's own x0 of the cond output
  (its `pred_original_sample` on a copy of its state, its `convert_model_output`, or the flow formula its
  step writes), the cond output recorded here by a forward hook of the test's own;
- stock again after `apg.guide(pipe, None)`, bit for bit;
- run-time verification passes on every stock class (a mismatch would raise in the guided calls above);
- skipping: outside a sigma interval the uncond pass does not run, and the result is that of both passes.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from test_skipping import SpyAPG, _interval, _run
from tiny_pipelines import count_rows, rel_diff
from tiny_registry import TINY, class_name

import apg
from apg.registry import _stock_names, spec_for

pytestmark = pytest.mark.usefixtures("single_thread")

W = 4.0  # the CFG weight of every run: the pipeline's own scale is spec.pipeline_scale(W)
NONLINEAR = dict(eta=0.0, norm_threshold=0.0, momentum=-0.5)
RECORDED = []  # x0 of the cond prediction per guided step; a module-level list survives the per-call deepcopy


class Recording(apg.APG):
    def __call__(self, pred_cond, pred_uncond, **context):
        RECORDED.append(pred_cond.detach().clone())
        return super().__call__(pred_cond, pred_uncond, **context)


def test_every_stock_class_has_a_tiny_case():
    assert {class_name(key) for key in TINY} == set(_stock_names())  # those the installed Diffusers has


def _stock(case, pipe, spec, **extra):
    return case.run(pipe, **{spec.scale_arg: spec.pipeline_scale(W)}, **extra)


@pytest.mark.parametrize("key", sorted(TINY))
def test_parity_nonlinear_and_stock_again(key):
    case = TINY[key]
    pipe = case.build()
    spec = spec_for(pipe)
    stock = _stock(case, pipe, spec)
    with apg.guide(pipe, apg.APG(W, eta=1.0, norm_threshold=0.0, momentum=0.0)):
        assert rel_diff(case.run(pipe), stock) <= 1e-4
        nonlinear = case.run(pipe, guidance=apg.APG(W, **NONLINEAR))
        assert rel_diff(nonlinear, case.run(pipe, guidance=apg.CFG(W))) > 1e-3  # the hook guided
    apg.guide(pipe, None)
    assert torch.equal(_stock(case, pipe, spec), stock)


def scheduler_x0(scheduler, output, timestep, sample, step):
    """x0 of `output` as the scheduler itself computes it at its current state (on a copy: nothing advances);
    `step`: the scheduler class's own step function."""
    scheduler = copy.deepcopy(scheduler)
    vars(scheduler).pop("step", None)  # apg's shadow: this is the scheduler's own step
    if getattr(scheduler, "step_index", None) is None and hasattr(scheduler, "_init_step_index"):
        scheduler._init_step_index(timestep)
    name = type(scheduler).__name__
    if hasattr(scheduler, "convert_model_output"):  # multistep solvers in x0 form (dpmsolver++, UniPC's bh2)
        assert getattr(scheduler.config, "algorithm_type", "dpmsolver++") in ("dpmsolver++", "sde-dpmsolver++", "deis")
        return scheduler.convert_model_output(output, sample=sample)
    if name.startswith("FlowMatch"):  # its step, sample + (s' - s) v, to the schedule's end (1 inverted, else 0)
        end = 1.0 if scheduler.config.get("invert_sigmas") else 0.0
        return sample + (end - scheduler.sigmas[scheduler.step_index]) * output
    result = step(scheduler, output, timestep, sample)
    assert getattr(result, "pred_original_sample", None) is not None, f"no own x0 known for {name}"
    return result.pred_original_sample


def _cond_output(spec, pipe, outputs):
    """The cond output of this step's denoiser evaluations as the scheduler steps it, from the registration."""
    if spec.batch == "separate":
        if len(outputs) != 2:
            return None  # a step the pipeline runs without its uncond pass
        cond = outputs[0]
        for quirk in spec.quirks:
            cond = quirk.captured(pipe, cond)
    else:
        both = outputs[-1]
        for quirk in spec.quirks:
            both = quirk.captured(pipe, both)
        cond = both.chunk(2)[1 if spec.batch == "uncond_first" else 0]
    return cond


@pytest.mark.parametrize("key", sorted(TINY))
def test_x0_is_the_schedulers_own(key, monkeypatch):
    case = TINY[key]
    pipe = case.build()
    spec = spec_for(pipe)
    outputs, own = [], []
    denoisers = [getattr(pipe, spec.denoiser)] + [m for q in spec.quirks for m in q.modules(pipe)]
    for denoiser in dict.fromkeys(denoisers):
        denoiser.register_forward_hook(
            lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out.sample))
    cls = type(pipe.scheduler)
    original = cls.step

    @functools.wraps(original)
    def step(self, model_output, timestep, sample, *args, **kwargs):
        cond = _cond_output(spec, pipe, outputs)
        outputs.clear()
        if cond is not None:
            # the cond rows of the sample: DiT steps the latents of both halves, apg's x0 is the cond half's
            rows = sample[: cond.shape[0]]
            for quirk in spec.quirks:
                cond = quirk.stepped(pipe, cond, model_output, rows)
            own.append(scheduler_x0(self, cond[:, : model_output.shape[1]], timestep, rows, original))
        return original(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(cls, "step", step)
    RECORDED.clear()
    with apg.guide(pipe, Recording(W, **NONLINEAR)):
        case.run(pipe)
    assert len(RECORDED) == len(own) > 1
    for i, (ours, theirs) in enumerate(zip(RECORDED, own)):
        assert rel_diff(ours, theirs) <= 1e-5, f"x0 at guided step {i}"


@pytest.mark.parametrize("key", sorted(TINY))
def test_skipping_matches_both_passes(key):
    """A sigma interval that leaves the first and the last step out: with skipping on, those steps run no uncond
    pass (fewer denoiser rows), and the result is the same as with both passes (apg.set_skipping(False))."""
    case = TINY[key]
    pipe = case.build()
    counted = count_rows(pipe)
    with apg.guide(pipe, apg.CFG(W)):  # the mixin's `guidance=` per call needs the guided class
        for steps in (4, 8):  # strength < 1 (inpainting, img2img, video-to-video) runs fewer: 3 or more needed
            run = functools.partial(case.run, steps=steps)
            _, _, seen = _run(pipe, run, SpyAPG(W, **NONLINEAR), False, counted)
            if len(seen) >= 3:
                break
        interval = _interval([sigma for _, sigma in seen])
        inside = [interval[0] < sigma <= interval[1] for _, sigma in seen]
        assert any(inside) and not all(inside), f"3 or more guided steps needed, got sigmas {seen}"
        rule = SpyAPG(W, **NONLINEAR, interval=interval)
        both, both_rows, _ = _run(pipe, run, rule, False, counted)
        skipped, rows, _ = _run(pipe, run, rule, True, counted)
    assert sum(rows) < sum(both_rows)
    assert rel_diff(skipped, both) <= 1e-5
