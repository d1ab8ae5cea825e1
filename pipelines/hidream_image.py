"""HiDream-I1 (one pass on [uncond, cond]) guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/hidream_image.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGHiDreamImagePipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
HiDreamImagePipeline.

HiDream steps the negated transformer output; apg converts that one to x0 with the scheduler's coefficients.
"""

from diffusers import HiDreamImagePipeline

from apg.integration import GuidancePipelineMixin


class APGHiDreamImagePipeline(GuidancePipelineMixin, HiDreamImagePipeline):
    """HiDreamImagePipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
