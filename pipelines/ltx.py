"""LTX-Video text-to-video guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/ltx.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGLTXPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
LTXPipeline.

Guided on the packed tokens [B, N, C]; `guidance_rescale` is re-applied after guidance, as stock does.
"""

from diffusers import LTXPipeline

from apg.integration import GuidancePipelineMixin


class APGLTXPipeline(GuidancePipelineMixin, LTXPipeline):
    """LTXPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
