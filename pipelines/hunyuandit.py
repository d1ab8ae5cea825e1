"""HunyuanDiT guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/hunyuandit.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGHunyuanDiTPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
HunyuanDiTPipeline.
"""

from diffusers import HunyuanDiTPipeline

from apg.integration import GuidancePipelineMixin


class APGHunyuanDiTPipeline(GuidancePipelineMixin, HunyuanDiTPipeline):
    """HunyuanDiTPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
