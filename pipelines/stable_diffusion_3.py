"""Stable Diffusion 3 guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_3.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusion3Pipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusion3Pipeline.
"""

from diffusers import StableDiffusion3Pipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusion3Pipeline(GuidancePipelineMixin, StableDiffusion3Pipeline):
    """StableDiffusion3Pipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
