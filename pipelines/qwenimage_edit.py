"""Qwen-Image-Edit with true CFG (negative prompt; "" when none is given) guided by apg:
`pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/qwenimage_edit.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGQwenImageEditPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
QwenImageEditPipeline.

Like Qwen-Image, it rescales the combined prediction to the cond prediction's norm (per token); apg does the
same to the guided prediction. The input image's tokens are dropped from the outputs before guidance, as stock.
"""

from diffusers import QwenImageEditPipeline

from apg.integration import GuidancePipelineMixin


class APGQwenImageEditPipeline(GuidancePipelineMixin, QwenImageEditPipeline):
    """QwenImageEditPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
