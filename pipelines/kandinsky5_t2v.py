"""Kandinsky 5 text-to-video guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/kandinsky5_t2v.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGKandinsky5T2VPipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
Kandinsky5T2VPipeline.
"""

from diffusers import Kandinsky5T2VPipeline

from apg.integration import GuidancePipelineMixin


class APGKandinsky5T2VPipeline(GuidancePipelineMixin, Kandinsky5T2VPipeline):
    """Kandinsky5T2VPipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
