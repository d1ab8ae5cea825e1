"""Quirks of the Flux family's registrations (tests/tiny_flux.py) beyond what every class is tested for."""

import pytest
from tiny_pipelines import rel_diff
from tiny_registry import TINY

import apg
from apg.errors import UnsupportedError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("key", ["Flux2KleinPipeline", "Flux2KleinInpaintPipeline"])
def test_a_step_distilled_checkpoint_is_refused_before_any_model_runs(key):
    case = TINY[key]
    pipe = case.build()
    pipe.register_to_config(is_distilled=True)  # the pipeline then runs no CFG at any scale
    calls = []
    pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    with apg.guide(pipe, apg.APG(4.0)):
        with pytest.raises(UnsupportedError, match="step-distilled"):
            case.run(pipe)
    assert not calls


@pytest.mark.parametrize("options", [dict(normalize=True), dict(clip_value=0.5), dict(normalize=True, clip_value=0.5)])
def test_bria_normalize_and_clip_value_are_reproduced(options):
    # normalize: 0.7 of the result taken to the cond prediction's std; clip_value: the result clipped, each step.
    # A high weight, so that both change the tiny model's result well beyond the parity tolerance.
    case, w = TINY["BriaPipeline"], 30.0
    pipe = case.build()
    stock = case.run(pipe, guidance_scale=w, **options)
    assert rel_diff(stock, case.run(pipe, guidance_scale=w)) > 1e-2
    with apg.guide(pipe, apg.APG(w, eta=1.0, norm_threshold=0.0, momentum=0.0)):
        assert rel_diff(case.run(pipe, **options), stock) <= 1e-4
