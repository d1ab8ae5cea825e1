"""CogVideoX text-to-video guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/cogvideox.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGCogVideoXPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
CogVideoXPipeline.

`use_dynamic_cfg=True` rescales the guidance's scale every step with the stock formula.
"""

from diffusers import CogVideoXPipeline

from apg.integration import GuidancePipelineMixin


class APGCogVideoXPipeline(GuidancePipelineMixin, CogVideoXPipeline):
    """CogVideoXPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
