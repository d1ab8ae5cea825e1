"""Parity: APG(eta=1, r=0, beta=0) through apg.guide equals the stock pipeline at the same scale.

Every pipeline family x every scheduler of its kind (noise-prediction or flow), plus v_prediction and
sample prediction on Stable Diffusion. A recording guidance proves the guidance ran once per scheduler step
on x0 of the latents' shape, so parity cannot pass with the hook silently off.
"""

import pytest
from tiny_pipelines import (
    FAMILIES,
    FLOW_FAMILIES,
    FLOW_SCHEDULERS,
    SCHEDULERS,
    call,
    make_scheduler,
    rel_diff,
)

import apg
from apg.schedulers import SUPPORTED_SCHEDULERS

pytestmark = pytest.mark.usefixtures("single_thread")

SCALE = 4.0
RECORDED = []  # shapes seen by Recording; a module-level list survives the per-call deep copy


class Recording(apg.APG):
    def __call__(self, pred_cond, pred_uncond, **context):  # apg.guide passes sigma= and step=
        RECORDED.append(tuple(pred_cond.shape))
        return super().__call__(pred_cond, pred_uncond, **context)


_cache = {}


def pipeline(family):
    if family not in _cache:
        _cache[family] = FAMILIES[family][0]()
    return _cache[family]


def check_parity(family, scheduler, prediction_type="epsilon"):
    pipe = pipeline(family)
    pipe.scheduler = make_scheduler(scheduler, prediction_type)
    scale_arg = FAMILIES[family][1]
    stock = call(pipe, family, **{scale_arg: SCALE})
    evaluations = []  # denoiser calls, counted by a hook of the test's own
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    handle = denoiser.register_forward_hook(lambda *_: evaluations.append(1))
    RECORDED.clear()
    try:
        with apg.guide(pipe, Recording(SCALE, eta=1.0, norm_threshold=0.0, momentum=0.0)):
            guided = call(pipe, family)
    finally:
        handle.remove()
    assert rel_diff(guided, stock) <= 1e-4
    per_step = 2 if family == "flux" else 1  # Flux runs cond and uncond as two passes
    assert len(RECORDED) == len(evaluations) // per_step > 0
    latent_shape = RECORDED[0]
    assert all(shape == latent_shape for shape in RECORDED)


NOISE_FAMILIES = [f for f in FAMILIES if f not in FLOW_FAMILIES]


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("family", NOISE_FAMILIES)
def test_parity_noise_prediction(family, scheduler):
    check_parity(family, scheduler)


@pytest.mark.parametrize("scheduler", list(FLOW_SCHEDULERS))
@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_parity_flow(family, scheduler):
    check_parity(family, scheduler)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_parity_prediction_types(prediction_type, scheduler):
    cls_name = type(make_scheduler(scheduler)).__name__
    if prediction_type in SUPPORTED_SCHEDULERS[cls_name]:
        check_parity("sd", scheduler, prediction_type)
    else:  # the scheduler's own step() rejects it (PNDM, Euler ancestral with "sample"): so does apg, up front
        pipe = pipeline("sd")
        pipe.scheduler = make_scheduler(scheduler, prediction_type)
        with pytest.raises(ValueError, match=f"prediction_type '{prediction_type}' of {cls_name}"):
            apg.guide(pipe, apg.APG(SCALE))
