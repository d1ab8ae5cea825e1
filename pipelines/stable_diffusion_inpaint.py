"""Stable Diffusion 1.x/2.x inpainting (9- or 4-channel UNet) guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_inpaint.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionInpaintPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionInpaintPipeline.
"""

from diffusers import StableDiffusionInpaintPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionInpaintPipeline(GuidancePipelineMixin, StableDiffusionInpaintPipeline):
    """StableDiffusionInpaintPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
