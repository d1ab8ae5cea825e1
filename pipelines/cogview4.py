"""CogView4 guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/cogview4.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGCogView4Pipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
CogView4Pipeline.
"""

from diffusers import CogView4Pipeline

from apg.integration import GuidancePipelineMixin


class APGCogView4Pipeline(GuidancePipelineMixin, CogView4Pipeline):
    """CogView4Pipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
