"""Stable Diffusion 3 image-to-image guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_3_img2img.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusion3Img2ImgPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusion3Img2ImgPipeline.
"""

from diffusers import StableDiffusion3Img2ImgPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusion3Img2ImgPipeline(GuidancePipelineMixin, StableDiffusion3Img2ImgPipeline):
    """StableDiffusion3Img2ImgPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
