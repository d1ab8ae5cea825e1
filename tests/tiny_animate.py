"""Tiny cases of the animate family (tests/tiny_registry.py): AnimateDiff and more video pipelines.

AnimateDiff: the tiny SD / SDXL UNet of tests/tiny_pipelines.py turned into a UNetMotionModel by a tiny
MotionAdapter; no text encoders (the calls pass `prompt_embeds` / `negative_prompt_embeds`), 2 frames of 16x16
(latents [1, 4, 2, 8, 8]).
"""

from __future__ import annotations

import torch
from tiny_control import _SDXL_UNET
from tiny_pipelines import _no_bar, _sd_unet, _sd_vae, make_scheduler
from tiny_registry import Case
from tiny_video import _embeds

import diffusers
from diffusers import MotionAdapter

_FRAMES = 2


def _case(build, call):
    """Case(build, run): `call()` gives the call's own arguments (fresh tensors each run)."""

    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(**{"output_type": "latent", **call(), **extra}, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(seed))
        return torch.as_tensor(out[0])

    return Case(build, run)


# -- AnimateDiff --------------------------------------------------------------------------------------------
def _motion_adapter():
    torch.manual_seed(5)
    return MotionAdapter(block_out_channels=(4, 8), motion_layers_per_block=1, motion_norm_num_groups=2,
                         motion_num_attention_heads=2, motion_max_seq_length=8).eval()


def tiny_animatediff(name: str, scheduler: str = "ddim", sdxl: bool = False, **components):
    """An AnimateDiff pipeline of class `name` (SD 1.5 or SDXL UNet + motion modules), without text encoders."""
    if sdxl:
        unet = _sd_unet(cross_attention_dim=64, projection_class_embeddings_input_dim=6 * 8 + 32, **_SDXL_UNET)
        text = dict(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    else:
        unet = _sd_unet()
        text = dict(text_encoder=None, tokenizer=None)
    return _no_bar(getattr(diffusers, name)(
        vae=_sd_vae(), unet=unet, motion_adapter=_motion_adapter(), scheduler=make_scheduler(scheduler),
        feature_extractor=None, image_encoder=None, **text, **components))


def animatediff_call(sdxl: bool = False, **extra) -> dict:
    call = dict(prompt_embeds=_embeds(10, 1, 8, 64 if sdxl else 32),
                negative_prompt_embeds=_embeds(11, 1, 8, 64 if sdxl else 32), height=16, width=16,
                num_frames=_FRAMES)
    if sdxl:
        call.update(pooled_prompt_embeds=_embeds(12, 1, 32), negative_pooled_prompt_embeds=_embeds(13, 1, 32))
    return {**call, **extra}


CASES: dict[str, Case] = {
    "AnimateDiffPipeline": _case(lambda: tiny_animatediff("AnimateDiffPipeline"), animatediff_call),
}
