"""Stable Diffusion 1.x/2.x image-to-image guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_img2img.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionImg2ImgPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionImg2ImgPipeline.
"""

from diffusers import StableDiffusionImg2ImgPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionImg2ImgPipeline(GuidancePipelineMixin, StableDiffusionImg2ImgPipeline):
    """StableDiffusionImg2ImgPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
