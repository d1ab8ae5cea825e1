"""Kolors text-to-image guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/kolors.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGKolorsPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
KolorsPipeline.
"""

from diffusers import KolorsPipeline

from apg.integration import GuidancePipelineMixin


class APGKolorsPipeline(GuidancePipelineMixin, KolorsPipeline):
    """KolorsPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
