"""Qwen-Image with true CFG (negative prompt; "" when none is given) guided by apg:
`pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/qwenimage.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGQwenImagePipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
QwenImagePipeline.

Qwen-Image rescales the combined prediction to the cond prediction's norm (per token) after CFG; apg does the
same to the guided prediction, so APG's output is renormalised too, as stock.
"""

from diffusers import QwenImagePipeline

from apg.integration import GuidancePipelineMixin


class APGQwenImagePipeline(GuidancePipelineMixin, QwenImagePipeline):
    """QwenImagePipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
