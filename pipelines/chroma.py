"""Chroma (two transformer passes per step, cond then uncond) guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/chroma.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGChromaPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
ChromaPipeline.
"""

from diffusers import ChromaPipeline

from apg.integration import GuidancePipelineMixin


class APGChromaPipeline(GuidancePipelineMixin, ChromaPipeline):
    """ChromaPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
