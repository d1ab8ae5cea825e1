"""DeepFloyd IF (and Kandinsky 2.2) with a learned-variance scheduler ("learned_range"): the pipeline hands the step the
guided noise channels followed by the cond half's variance channels; apg guides the first and passes the second on.

tests/test_every_pipeline.py runs the IF classes with a fixed-variance scheduler (its x0 check steps the noise
channels alone, which a learned-variance scheduler cannot); here: parity with stock CFG and a guidance that differs.
"""

import pytest
import torch
from tiny_pipelines import rel_diff
from tiny_registry import TINY

import diffusers

import apg

pytestmark = pytest.mark.usefixtures("single_thread")

W = 4.0


@pytest.mark.parametrize("key", ["IFPipeline", "IFSuperResolutionPipeline", "KandinskyV22Pipeline"])
def test_learned_variance_guided_and_passed_on(key):
    case = TINY[key]
    pipe = case.build()
    pipe.scheduler = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False)
    stock = case.run(pipe, guidance_scale=W)
    with apg.guide(pipe, apg.APG(W, eta=1.0, norm_threshold=0.0, momentum=0.0)):
        assert rel_diff(case.run(pipe), stock) <= 1e-4
        nonlinear = case.run(pipe, guidance=apg.APG(W, eta=0.0, norm_threshold=0.0, momentum=-0.5))
        assert rel_diff(nonlinear, case.run(pipe, guidance=apg.CFG(W))) > 1e-3
    apg.guide(pipe, None)
    assert torch.equal(case.run(pipe, guidance_scale=W), stock)
