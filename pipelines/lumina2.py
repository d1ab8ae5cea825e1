"""Lumina Image 2.0 (two passes per step) guided by apg: `pipe(..., guidance=apg.APG(...))`.

Load it as a Diffusers custom pipeline,
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/lumina2.py", trust_remote_code=True)`,
or from a loaded pipeline with `APGLumina2Pipeline.from_pipe(pipe)`. Without `guidance=` it behaves like
Lumina2Pipeline.

Lumina2 steps the negated transformer output; with `cfg_normalization=True` (its default) it rescales the
combined prediction to the cond prediction's norm (over the last latent dim), and apg does the same to the guided
one; past `cfg_trunc_ratio` of the steps it runs no uncond pass, and those steps stay unguided, as stock.
"""

from diffusers import Lumina2Pipeline

from apg.integration import GuidancePipelineMixin


class APGLumina2Pipeline(GuidancePipelineMixin, Lumina2Pipeline):
    """Lumina2Pipeline taking `guidance=` (an apg.Guidance) and `guidance_space=` ("x0" or "raw") per call."""
