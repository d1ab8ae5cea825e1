"""Flux Kontext with true CFG (negative prompt; "" when none is given) guided by apg:
`pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/flux_kontext.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGFluxKontextPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
FluxKontextPipeline.

The input image's tokens are dropped from the outputs before guidance, as stock.
"""

from diffusers import FluxKontextPipeline

from apg.integration import GuidancePipelineMixin


class APGFluxKontextPipeline(GuidancePipelineMixin, FluxKontextPipeline):
    """FluxKontextPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
