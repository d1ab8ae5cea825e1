"""apg through Diffusers' guider slot (apg/guider.py), per pipeline: parity with Diffusers' own CFG guider, the x0
handed to the rule against the scheduler's own x0, skipped unconditional passes against the schedule's sigma, and
the pipeline's own guider objects back afterwards."""

import copy
import math

import pytest
import torch
from tiny_guider import CASES, W, run
from tiny_pipelines import rel_diff

import apg
from apg import guider as guider_slot
from apg.errors import UnsupportedError
from diffusers.guiders import ClassifierFreeGuidance

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 4
_PIPES = {}


def _pipe(name):
    """One tiny pipeline per case for the module (builders are deterministic)."""
    if name not in _PIPES:
        _PIPES[name] = CASES[name][0]()
    return _PIPES[name]


@pytest.fixture(params=sorted(CASES))
def case(request):
    return request.param, _pipe(request.param)


def _cfg_as_apg(w=W):
    return apg.APG(w, eta=1.0, norm_threshold=0.0, momentum=0.0)


def _slots(pipe):
    return {name: getattr(pipe, name) for name in guider_slot.SLOTS if name in pipe.components}


def test_parity_with_diffusers_cfg_guider(case):
    name, pipe = case
    stock = run(pipe, name, STEPS)
    with apg.guide(pipe, _cfg_as_apg()):
        guided = run(pipe, name, STEPS)
    assert rel_diff(guided, stock) <= 1e-4
    with apg.guide(pipe, apg.APG.from_preset("sdxl", W)):  # and the rule does change the result
        assert rel_diff(run(pipe, name, STEPS), stock) > 1e-3


class _Recording(apg.APG):
    """APG that records the x0 pair and step context it is handed."""

    seen = []

    def __call__(self, pred_cond, pred_uncond, *, sigma=None, step=None):
        _Recording.seen.append((pred_cond.clone(), pred_uncond.clone(), sigma, step))
        return super().__call__(pred_cond, pred_uncond, sigma=sigma, step=step)


def _own_x0(scheduler, step, output, timestep, sample):
    """x0 of `output` as the scheduler itself computes it at its current state (a copy, so nothing advances)."""
    scheduler = copy.deepcopy(scheduler)
    vars(scheduler).pop("step", None)  # apg's shadow: this is the scheduler's own step
    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)
    name = type(scheduler).__name__
    if name == "EulerDiscreteScheduler":
        return step(scheduler, output, timestep, sample).pred_original_sample
    if name == "UniPCMultistepScheduler":
        return scheduler.convert_model_output(output, sample=sample)
    assert name == "FlowMatchEulerDiscreteScheduler", name
    return sample - scheduler.sigmas[scheduler.step_index] * output  # its step: sample + (s' - s) * v, v = eps - x0


def test_x0_handed_to_the_rule_is_the_schedulers_own(case, monkeypatch):
    name, pipe = case
    captured, expected = [], []
    forward = guider_slot.ApgGuider.forward

    def recording_forward(self, pred_cond, pred_uncond=None):
        captured.append((pred_cond, pred_uncond))
        return forward(self, pred_cond, pred_uncond)

    monkeypatch.setattr(guider_slot.ApgGuider, "forward", recording_forward)
    step = type(pipe.scheduler).step

    def recording_step(self, model_output, timestep, sample, *args, **kwargs):
        cond, uncond = captured.pop()
        expected.append((_own_x0(self, step, cond, timestep, sample), _own_x0(self, step, uncond, timestep, sample)))
        return step(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(type(pipe.scheduler), "step", recording_step)
    _Recording.seen = []
    with apg.guide(pipe, _Recording(W, momentum=-0.5)):
        run(pipe, name, STEPS)
    assert [s[3] for s in _Recording.seen] == list(range(STEPS))
    assert len(expected) == STEPS
    for (x0_cond, x0_uncond, _, _), (own_cond, own_uncond) in zip(_Recording.seen, expected):
        for got, own in ((x0_cond, own_cond), (x0_uncond, own_uncond)):
            assert (got - own).abs().max() <= 1e-5 * max(1.0, own.abs().max())


def _edm_sigmas(scheduler, steps):
    """EDM sigma of each step, read from the schedule by hand: flow sigmas s give s / (1 - s)."""
    sigmas = [float(s) for s in scheduler.sigmas[:steps]]
    flow = type(scheduler).__name__.startswith("FlowMatch") or scheduler.config.get("use_flow_sigmas", False)
    return [s / (1 - s) if s < 1 else math.inf for s in sigmas] if flow else sigmas


def _count_evaluations(pipe, denoisers):
    counts = []
    handles = [getattr(pipe, d).register_forward_hook(lambda *_: counts.append(1)) for d in denoisers]
    return counts, handles


def test_skipped_passes_follow_the_schedules_sigma(case, monkeypatch):
    name, pipe = case
    steps = 6
    run(pipe, name, steps)  # sets the schedule
    sigmas = _edm_sigmas(pipe.scheduler, steps)
    inside = sorted(sigmas)[1:-2]  # an interval leaving steps out at both ends
    low, high = inside[0] * 0.999, inside[-1]
    rule = apg.APG.from_preset("sdxl", W, interval=(low, high))
    counts, handles = _count_evaluations(pipe, CASES[name][2])
    with apg.guide(pipe, rule):
        skipped = run(pipe, name, steps)
    expected = sum(2 if low < s <= high else 1 for s in sigmas)
    assert sum(counts) == expected < 2 * steps
    counts.clear()
    monkeypatch.setattr(guider_slot._GuiderRun, "num_conditions", lambda self: 2)  # both passes at every step
    with apg.guide(pipe, rule):
        both = run(pipe, name, steps)
    for handle in handles:
        handle.remove()
    assert sum(counts) == 2 * steps
    assert rel_diff(skipped, both) <= 1e-6


def test_restore_gives_back_the_same_guiders_and_stock_results(case):
    name, pipe = case
    before = _slots(pipe)
    stock = run(pipe, name, 2)
    with apg.guide(pipe, apg.APG(W)):
        assert all(_slots(pipe)[k] is v for k, v in before.items())  # an ApgGuider sits there only during a call
        run(pipe, name, 2)
    assert all(_slots(pipe)[k] is v for k, v in before.items())
    assert torch.equal(run(pipe, name, 2), stock)
    apg.guide(pipe, apg.APG(W))
    assert all(_slots(pipe)[k] is v for k, v in before.items())
    apg.guide(pipe, None)
    assert all(_slots(pipe)[k] is v for k, v in before.items())
    assert torch.equal(run(pipe, name, 2), stock)


@pytest.mark.parametrize("name", ["Wan22ModularPipeline", "HunyuanImagePipeline"])
def test_two_guider_slots_hold_one_rule(name, monkeypatch):
    """Wan 2.2's guider/guider_2 and HunyuanImage's guider/ocr_guider hold one ApgGuider during a call: one rule,
    one step count, one momentum state across the switch; both of the pipeline's own guiders are back afterwards."""
    pipe = _pipe(name)
    before = _slots(pipe)
    assert len(before) == 2
    seen = []
    forward = guider_slot.ApgGuider.forward

    def recording_forward(self, pred_cond, pred_uncond=None):
        seen.append((self, *_slots(pipe).values()))
        return forward(self, pred_cond, pred_uncond)

    monkeypatch.setattr(guider_slot.ApgGuider, "forward", recording_forward)
    denoisers = CASES[name][2]
    counts = {d: [] for d in denoisers}
    handles = [getattr(pipe, d).register_forward_hook(lambda *_, d=d: counts[d].append(1)) for d in denoisers]
    _Recording.seen = []
    with apg.guide(pipe, _Recording(W, momentum=-0.5)):
        run(pipe, name, STEPS)
    for handle in handles:
        handle.remove()
    assert all(counts.values())  # Wan 2.2: both experts ran
    assert len(seen) == STEPS and all(len({id(g) for g in guiders}) == 1 for guiders in seen)
    assert [s[3] for s in _Recording.seen] == list(range(STEPS))
    assert all(_slots(pipe)[k] is v for k, v in before.items())


def test_apg_guider_in_the_slot_without_apg_guide_says_what_to_do():
    name = "StableDiffusionXLModularPipeline"
    pipe = _pipe(name)
    stock = pipe.guider
    rule = apg.APG(W, interval=apg.INTERVALS["sdxl"])
    guider = guider_slot.ApgGuider(guidance=rule)
    assert guider.guidance == rule and guider.config["guidance"] == rule.to_dict()
    assert guider_slot.ApgGuider.from_config(guider.config).guidance == rule  # a registered ConfigMixin
    assert guider.new().guidance == rule
    try:
        pipe.update_components(guider=guider)
        assert pipe.guider is guider
        with pytest.raises(RuntimeError, match=r"only inside a call set up by apg.guide.*apg.guide\(pipe, rule\)"):
            run(pipe, name, 2)
        spec = pipe.get_component_spec("guider")  # the ComponentSpec update_components recorded
        assert spec.create().guidance == rule
    finally:
        pipe.update_components(guider=stock)


@pytest.mark.parametrize("bad", [3.0, {"type": "Nope"}])
def test_apg_guider_rejects_what_is_not_a_rule(bad):
    with pytest.raises((TypeError, ValueError), match="guidance|config type"):
        guider_slot.ApgGuider(guidance=bad)


def test_refused_and_empty_guider_pipelines_name_the_reason():
    name = "HunyuanVideo15Pipeline"
    pipe = _pipe(name)
    stock = pipe.guider
    vars(pipe)["guider"] = None
    try:
        with pytest.raises(UnsupportedError, match=r"HunyuanVideo15Pipeline holds no guider"):
            apg.guide(pipe, apg.APG(W))
    finally:
        vars(pipe)["guider"] = stock
    assert set(guider_slot.REFUSED) >= {"LTX2ModularPipeline"}


def test_a_modular_folder_loads_as_a_guided_modular_pipeline(tmp_path):
    """apg.runtime.load_pipeline (apg compare --model, the app) on a folder with a modular_model_index.json."""
    from diffusers.modular_pipelines import ModularPipeline
    from tiny_guider import save_sdxl_modular

    from apg.runtime import load_pipeline

    pipe = load_pipeline(str(save_sdxl_modular(tmp_path)), "cpu", "float32")
    assert isinstance(pipe, ModularPipeline) and isinstance(pipe.guider, ClassifierFreeGuidance)
    w = pipe.guider.guidance_scale
    call = dict(prompt="a photo of a cat", num_inference_steps=2, height=32, width=32, output="latents")
    stock = pipe(**call, generator=torch.Generator().manual_seed(0))
    with apg.guide(pipe, _cfg_as_apg(w)):
        assert rel_diff(pipe(**call, generator=torch.Generator().manual_seed(0)), stock) <= 1e-4


def test_raw_rule_equals_diffusers_zero_star_guider():
    """CFG-Zero* is defined on the raw (velocity) output: apg's equals Diffusers' own guider there."""
    from diffusers.guiders import ClassifierFreeZeroStarGuidance

    name = "StableDiffusion3ModularPipeline"
    pipe = _pipe(name)
    stock = pipe.guider
    try:
        pipe.update_components(guider=ClassifierFreeZeroStarGuidance(guidance_scale=W, zero_init_steps=1))
        reference = run(pipe, name, STEPS)
    finally:
        pipe.update_components(guider=stock)
    with apg.guide(pipe, apg.CFGZeroStar(W, zero_init_steps=1)):
        assert rel_diff(run(pipe, name, STEPS), reference) <= 1e-4


def test_scale_one_runs_no_unconditional_pass():
    name = "WanModularPipeline"
    pipe = _pipe(name)
    counts, handles = _count_evaluations(pipe, CASES[name][2])
    with apg.guide(pipe, apg.APG(1.0)):
        guided = run(pipe, name, STEPS)
    for handle in handles:
        handle.remove()
    assert sum(counts) == STEPS
    stock = pipe.guider
    try:
        pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=1.0))  # the cond prediction alone
        assert rel_diff(guided, run(pipe, name, STEPS)) <= 1e-5
    finally:
        pipe.update_components(guider=stock)


def test_set_skipping_false_runs_both_passes_through_the_guider_slot_too():
    name = "WanModularPipeline"
    pipe = _pipe(name)
    with apg.guide(pipe, apg.APG(1.0)):
        skipped = run(pipe, name, STEPS)
        counts, handles = _count_evaluations(pipe, CASES[name][2])
        with apg.set_skipping(False):
            both = run(pipe, name, STEPS)
    for handle in handles:
        handle.remove()
    assert sum(counts) == 2 * STEPS
    assert rel_diff(both, skipped) <= 1e-5


def test_zeroed_steps_through_qwens_renormalisation_stay_zero_not_nan():
    """Regression: Qwen-Image's rescale to the cond norm divided 0 by 0 at CFG-Zero*'s zeroed steps."""
    name = "QwenImageModularPipeline"
    with apg.guide(_pipe(name), apg.CFGZeroStar(W, zero_init_steps=1)):
        assert torch.isfinite(run(_pipe(name), name, 2)).all()


def test_an_unknown_change_to_the_guiders_result_is_refused(monkeypatch):
    """Qwen-Image rescales the guider's result before stepping; without its quirk, apg refuses rather than guess."""
    name = "QwenImageModularPipeline"
    pipe = _pipe(name)
    monkeypatch.setattr(guider_slot, "QUIRKS", {})
    with pytest.raises(RuntimeError, match=r"QwenImageModularPipeline changes the guider's result before "
                                           r"scheduler.step"):
        with apg.guide(pipe, apg.APG(W)):
            run(pipe, name, 2)
    assert isinstance(pipe.guider, ClassifierFreeGuidance)  # given back after the error
