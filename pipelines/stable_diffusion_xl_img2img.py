"""Stable Diffusion XL image-to-image guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_xl_img2img.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionXLImg2ImgPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionXLImg2ImgPipeline.
"""

from diffusers import StableDiffusionXLImg2ImgPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionXLImg2ImgPipeline(GuidancePipelineMixin, StableDiffusionXLImg2ImgPipeline):
    """StableDiffusionXLImg2ImgPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
