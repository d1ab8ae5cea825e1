"""Stable Diffusion 1.x/2.x with ControlNet guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/stable_diffusion_controlnet.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGStableDiffusionControlNetPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
StableDiffusionControlNetPipeline.
"""

from diffusers import StableDiffusionControlNetPipeline

from apg.integration import GuidancePipelineMixin


class APGStableDiffusionControlNetPipeline(GuidancePipelineMixin, StableDiffusionControlNetPipeline):
    """StableDiffusionControlNetPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
