"""Stable Diffusion 1.x/2.x text-to-image guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionPipeline.
"""

from diffusers import StableDiffusionPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionPipeline(GuidancePipelineMixin, StableDiffusionPipeline):
    """StableDiffusionPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
