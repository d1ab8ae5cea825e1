"""Stable Diffusion XL text-to-image guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_xl.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionXLPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionXLPipeline.
"""

from diffusers import StableDiffusionXLPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionXLPipeline(GuidancePipelineMixin, StableDiffusionXLPipeline):
    """StableDiffusionXLPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
