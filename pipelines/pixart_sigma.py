"""PixArt-Sigma guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/pixart_sigma.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGPixArtSigmaPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
PixArtSigmaPipeline.
"""

from diffusers import PixArtSigmaPipeline

from apg.integration import GuidancePipelineMixin


class APGPixArtSigmaPipeline(GuidancePipelineMixin, PixArtSigmaPipeline):
    """PixArtSigmaPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
