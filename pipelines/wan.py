"""Wan text-to-video guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/wan.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGWanPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
WanPipeline.

Wan 2.2's two experts are both guided by the one guidance; `guidance_scale_2=` sets the
low-noise expert's scale (default: the guidance's own), as in WanPipeline.
"""

from diffusers import WanPipeline

from apg.integration import GuidancePipelineMixin


class APGWanPipeline(GuidancePipelineMixin, WanPipeline):
    """WanPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
