"""DiT (class-conditional) guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/dit.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGDiTPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
DiTPipeline.
"""

from diffusers import DiTPipeline

from apg.integration import GuidancePipelineMixin


class APGDiTPipeline(GuidancePipelineMixin, DiTPipeline):
    """DiTPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
