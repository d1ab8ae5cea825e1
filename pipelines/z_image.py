"""Z-Image guided by apg: `pipe(..., guidance=apg.APG(...))`.

Its rule pos + s * (pos - neg) is CFG at w = s + 1: `apg.APG(w, eta=1.0, momentum=0.0)` reproduces the stock
call at `guidance_scale=w - 1`. Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/z_image.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGZImagePipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
ZImagePipeline.
"""

from diffusers import ZImagePipeline

from apg.integration import GuidancePipelineMixin


class APGZImagePipeline(GuidancePipelineMixin, ZImagePipeline):
    """ZImagePipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
