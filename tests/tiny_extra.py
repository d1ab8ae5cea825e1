"""Tiny cases: the extra family (issue 17), built from tests/tiny_pipelines.py's parts."""

from __future__ import annotations

import torch
from tiny_pipelines import _clip_text, _no_bar, _sd_unet, _sd_vae, clip_tokenizer, make_scheduler
from tiny_registry import Case

from diffusers import DDPMScheduler, PriorTransformer, StableUnCLIPPipeline
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

CASES: dict = {}

EMBED = 32  # CLIP text width = image-embedding width of the unCLIP prior


def _stable_unclip():
    """The prior (DDPM, its own CFG at prior_guidance_scale) feeds the unet's class embedding; apg guides the unet."""
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=EMBED, num_layers=1,
                             num_embeddings=16).eval()
    unet = _sd_unet(class_embed_type="projection", projection_class_embeddings_input_dim=EMBED * 2)
    return _no_bar(StableUnCLIPPipeline(
        prior_tokenizer=tokenizer, prior_text_encoder=_clip_text(tokenizer, projection_dim=EMBED), prior=prior,
        prior_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                                      clip_sample=True, clip_sample_range=5.0, num_train_timesteps=1000),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=EMBED),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=_clip_text(tokenizer), unet=unet, scheduler=make_scheduler("ddim"),
        vae=_sd_vae(),
    ))


def _stable_unclip_run(pipe, steps=3, seed=0, **extra):
    return pipe(prompt="a cat", height=16, width=16, num_inference_steps=steps, prior_num_inference_steps=2,
                generator=torch.Generator().manual_seed(seed), output_type="latent", **extra).images


CASES["StableUnCLIPPipeline"] = Case(_stable_unclip, _stable_unclip_run)
