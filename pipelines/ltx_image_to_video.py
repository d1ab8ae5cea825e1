"""LTX-Video image-to-video guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/ltx_image_to_video.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGLTXImageToVideoPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
LTXImageToVideoPipeline.

Only frames 1: are guided (frame 0 is the image condition, never stepped); `guidance_rescale`
is refused (its stock std spans frame 0).
"""

from diffusers import LTXImageToVideoPipeline

from apg.integration import GuidancePipelineMixin


class APGLTXImageToVideoPipeline(GuidancePipelineMixin, LTXImageToVideoPipeline):
    """LTXImageToVideoPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
