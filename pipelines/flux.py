"""Flux with true CFG (negative prompt; "" when none is given) guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/flux.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGFluxPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
FluxPipeline.
"""

from diffusers import FluxPipeline

from apg.integration import GuidancePipelineMixin


class APGFluxPipeline(GuidancePipelineMixin, FluxPipeline):
    """FluxPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
