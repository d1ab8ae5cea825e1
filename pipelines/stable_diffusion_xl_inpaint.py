"""Stable Diffusion XL inpainting (9- or 4-channel UNet) guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_xl_inpaint.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionXLInpaintPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionXLInpaintPipeline.
"""

from diffusers import StableDiffusionXLInpaintPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionXLInpaintPipeline(GuidancePipelineMixin, StableDiffusionXLInpaintPipeline):
    """StableDiffusionXLInpaintPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
