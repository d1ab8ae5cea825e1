"""Sana guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/sana.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGSanaPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
SanaPipeline.
"""

from diffusers import SanaPipeline

from apg.integration import GuidancePipelineMixin


class APGSanaPipeline(GuidancePipelineMixin, SanaPipeline):
    """SanaPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
