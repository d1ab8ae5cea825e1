"""Quirks of the Flux family's registrations (tests/tiny_flux.py) beyond what every class is tested for."""

import pytest
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
