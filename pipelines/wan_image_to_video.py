"""Wan image-to-video guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/wan_image_to_video.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGWanImageToVideoPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
WanImageToVideoPipeline.

Wan 2.2's two experts are both guided by the one guidance; `guidance_scale_2=` sets the
low-noise expert's scale (default: the guidance's own), as in WanImageToVideoPipeline.
"""

from diffusers import WanImageToVideoPipeline

from apg.integration import GuidancePipelineMixin


class APGWanImageToVideoPipeline(GuidancePipelineMixin, WanImageToVideoPipeline):
    """WanImageToVideoPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
