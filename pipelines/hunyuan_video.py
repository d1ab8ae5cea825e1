"""HunyuanVideo with true CFG guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/hunyuan_video.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGHunyuanVideoPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
HunyuanVideoPipeline.

The guidance replaces `true_cfg_scale` (a negative prompt "" is used when none is given);
`guidance_scale` stays the model's embedded (distilled) guidance.
"""

from diffusers import HunyuanVideoPipeline

from apg.integration import GuidancePipelineMixin


class APGHunyuanVideoPipeline(GuidancePipelineMixin, HunyuanVideoPipeline):
    """HunyuanVideoPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
