"""Stable Diffusion XL with ControlNet guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_xl_controlnet.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionXLControlNetPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionXLControlNetPipeline.
"""

from diffusers import StableDiffusionXLControlNetPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionXLControlNetPipeline(GuidancePipelineMixin, StableDiffusionXLControlNetPipeline):
    """StableDiffusionXLControlNetPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
