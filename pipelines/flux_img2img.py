"""Flux image-to-image with true CFG (negative prompt; "" when none is given) guided by apg:
`pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/flux_img2img.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGFluxImg2ImgPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
FluxImg2ImgPipeline.
"""

from diffusers import FluxImg2ImgPipeline

from apg.integration import GuidancePipelineMixin


class APGFluxImg2ImgPipeline(GuidancePipelineMixin, FluxImg2ImgPipeline):
    """FluxImg2ImgPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
