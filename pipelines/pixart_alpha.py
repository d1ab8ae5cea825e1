"""PixArt-Alpha guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/pixart_alpha.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGPixArtAlphaPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
PixArtAlphaPipeline.
"""

from diffusers import PixArtAlphaPipeline

from apg.integration import GuidancePipelineMixin


class APGPixArtAlphaPipeline(GuidancePipelineMixin, PixArtAlphaPipeline):
    """PixArtAlphaPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
