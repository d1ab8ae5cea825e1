"""AuraFlow guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/aura_flow.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGAuraFlowPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
AuraFlowPipeline.
"""

from diffusers import AuraFlowPipeline

from apg.integration import GuidancePipelineMixin


class APGAuraFlowPipeline(GuidancePipelineMixin, AuraFlowPipeline):
    """AuraFlowPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
