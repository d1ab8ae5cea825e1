"""Tiny cases of the Flux family (Flux inpaint/ControlNet/Kontext inpaint, Chroma, Flux 2 Klein, Krea 2, Bria,
CogView): random components built in code, called with random prompt embeddings and no text encoder, except Bria
Fibo's, which takes prompts only (a tiny SmolLM3 on a word-level tokenizer)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
import tiny_control
import tiny_image
import tiny_video
from tiny_image import TEXT_LEN, _embeds, _flux_call, _flux_transformer, _image
from tiny_pipelines import _flow_vae, _no_bar, _sd_vae, make_scheduler, word_tokenizer
from tiny_registry import Case

import diffusers
from diffusers.models.transformers.transformer_bria_fibo import BriaFiboTransformer2DModel


def _mask(size=16):
    """White (repainted) right half, black (kept) left half."""
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[:, size // 2:] = 255
    return PIL.Image.fromarray(pixels)


def _mask_tokens(valid):
    return tiny_image._mask(valid=valid, dtype=torch.bool)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _flux_parts():
    return dict(scheduler=make_scheduler("flow_euler"), vae=_flow_vae(1), text_encoder=None, tokenizer=None,
                text_encoder_2=None, tokenizer_2=None, transformer=_flux_transformer())


def _build(name, parts):
    """A builder of a fresh pipeline of Diffusers' class `name` from `parts()`, progress bar off (the class is
    looked up when it is built: an older Diffusers may lack it)."""
    return lambda: _no_bar(getattr(diffusers, name)(**parts()))


def _run(inputs, steps_per=1.0):
    """run(pipe, steps, seed, **extra) with the call arguments `inputs()`; strength < 1 runs steps / steps_per."""
    def run(pipe, steps=3, seed=0, **extra):
        torch.manual_seed(seed)  # CogView4 Control samples its control latents from the global RNG
        out = pipe(**{"output_type": "latent", **inputs(), **extra}, num_inference_steps=round(steps * steps_per),
                   generator=_generator(seed))
        return out[0]
    return run


def _flux_controlnet_parts():
    torch.manual_seed(4)
    controlnet = diffusers.FluxControlNetModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()
    return dict(_flux_parts(), controlnet=controlnet)


def _chroma_parts():
    return tiny_image.tiny_chroma_pipeline().components


def _chroma_inpaint_parts():
    parts = _chroma_parts()
    # The inpaint pipeline reads `transformer.config.guidance_embeds`, which ChromaTransformer2DModel's own config
    # lacks; a loaded config.json that has the key keeps it (as a hidden config entry), as here.
    parts["transformer"].register_to_config(guidance_embeds=False)
    return parts


def _chroma_call():
    return tiny_image.IMAGE_FAMILIES["chroma"][2]()


def _flux2_parts():
    """Flux 2 Klein: latents [B, 64 tokens, 4] for 16x16 images (1 latent channel, 2x2 patches)."""
    torch.manual_seed(0)
    transformer = diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False,
    ).eval()
    torch.manual_seed(3)
    vae = diffusers.AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()
    return dict(scheduler=make_scheduler("flow_euler"), vae=vae, text_encoder=None, tokenizer=None,
                transformer=transformer)


def _flux2_call():
    # no negative prompt argument: the uncond pass reads these embeddings (or encodes "")
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=10),
                negative_prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=11), height=16, width=16)


def _krea2_parts():
    """Krea 2: latents [B, 64 tokens, 16] for 32x32 images (VAE x2, 2x2 patches)."""
    torch.manual_seed(0)
    transformer = diffusers.Krea2Transformer2DModel(
        in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, timestep_embed_dim=16, text_hidden_dim=16, num_text_layers=2, text_num_attention_heads=2,
        text_num_key_value_heads=2, text_intermediate_size=32, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    vae = tiny_image._qwen_parts()["vae"]  # Qwen-Image's VAE, as Krea 2 ships
    return dict(scheduler=make_scheduler("flow_euler"), vae=vae, text_encoder=None, tokenizer=None,
                transformer=transformer, text_encoder_select_layers=(1, 2))


def _krea2_call():
    """Text embeddings [B, L, text layers, dim] with boolean masks."""
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 2, 16, seed=10), prompt_embeds_mask=_mask_tokens(6),
                negative_prompt_embeds=_embeds(1, TEXT_LEN, 2, 16, seed=11),
                negative_prompt_embeds_mask=_mask_tokens(4), height=32, width=32)


def _bria_parts():
    """Bria: latents [B, 16 tokens, 16] for 16x16 images (VAE x2, 4 latent channels, 2x2 patches)."""
    torch.manual_seed(0)
    transformer = diffusers.BriaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4],
    ).eval()
    return dict(scheduler=make_scheduler("flow_euler"), vae=_flow_vae(4), text_encoder=None, tokenizer=None,
                transformer=transformer)


def _bria_call():
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 32, seed=10),
                negative_prompt_embeds=_embeds(1, TEXT_LEN, 32, seed=11), height=16, width=16)


def _fibo_parts():
    """Bria Fibo: latents [B, 16 tokens, 16] for 64x64 images (its VAE factor is fixed at 16); a SmolLM3 text
    encoder (the pipeline takes no prompt embeddings), unused VAE (latents are returned)."""
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    torch.manual_seed(0)
    transformer = BriaFiboTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, text_encoder_dim=32, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4],
    ).eval()
    tokenizer = word_tokenizer("t5")
    torch.manual_seed(1)
    text_encoder = SmolLM3ForCausalLM(SmolLM3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, pad_token_id=0, bos_token_id=None, eos_token_id=1,
    )).eval()
    return dict(scheduler=make_scheduler("flow_euler"), vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
                transformer=transformer)


# An empty prompt is encoded as token 128000 (SmolLM3's <|begin_of_text|>): the tiny vocabulary needs words.
_FIBO_CALL = dict(prompt="a photo of a cat", negative_prompt="a blue car", height=64, width=64)


def _fibo_edit_parts():
    return dict(_fibo_parts(), vae=tiny_video._wan_vae())  # encodes the reference image (x8 here, not x16)


def _fibo_edit_call():
    # its prompt is an edit JSON; the reference's tokens follow the latents' and are cut, as the pipeline does
    return dict(_FIBO_CALL, prompt={"edit_instruction": "a photo of a cat"}, image=_image(32))


def _fibo2_parts():
    """Bria Fibo 2.0: channel-first latents [B, 4, 8, 8] for 64x64 images (x8 without a VAE), 2x2 patches."""
    torch.manual_seed(0)
    transformer = diffusers.BriaFibo2Transformer2DModel(
        in_channels=4, patch_size=2, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, cap_feat_dim=16,
        injection_layer_ids=(0,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8, gist_step=4,
        gist_min_text_len=4, gist_max_text_len=16, axes_dims=(4, 6, 6), axes_lens=(32, 32, 32),
    ).eval()
    return dict(scheduler=make_scheduler("flow_euler"), vae=None, text_encoder=None, processor=None,
                transformer=transformer)


def _fibo2_call():
    """Text features [B, 1 + injection layers, L, C] with boolean masks; two passes, so lengths may differ."""
    return dict(prompt_embeds=_embeds(1, 2, TEXT_LEN, 16, seed=10), prompt_embeds_mask=_mask_tokens(6),
                negative_prompt_embeds=_embeds(1, 2, TEXT_LEN, 16, seed=11),
                negative_prompt_embeds_mask=_mask_tokens(4), height=64, width=64)


def _cogview4_control_parts():
    """CogView4's parts with a transformer that takes [latents, control latents] channels (8) for 4 out."""
    parts = tiny_control.tiny_cogview4_pipeline().components
    torch.manual_seed(0)
    parts["transformer"] = diffusers.CogView4Transformer2DModel.from_config(parts["transformer"].config,
                                                                            in_channels=8).eval()
    return parts


def _cogview3plus_parts():
    """CogView3-Plus with its shipped scheduler kind (CogVideoX's DDIM, v-prediction); latents [B, 4, 8, 8]."""
    torch.manual_seed(0)
    transformer = diffusers.CogView3PlusTransformer2DModel(
        patch_size=2, in_channels=4, num_layers=1, attention_head_dim=4, num_attention_heads=2, out_channels=4,
        text_embed_dim=32, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8,
    ).eval()
    return dict(transformer=transformer, vae=_sd_vae(), scheduler=tiny_video.cogvideox_scheduler(), text_encoder=None,
                tokenizer=None)


def _cogview3_call():
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 32, seed=10), height=16, width=16)


CASES: dict[str, Case] = {
    # strength 0.75 runs 3 of 4 steps
    "FluxInpaintPipeline": Case(_build("FluxInpaintPipeline", _flux_parts),
                                _run(lambda: {**_flux_call(), "image": _image(16), "mask_image": _mask(),
                                              "strength": 0.75}, 4 / 3)),
    # the ControlNet runs once per step, on the cond inputs; both transformer passes take its residuals
    "FluxControlNetPipeline": Case(_build("FluxControlNetPipeline", _flux_controlnet_parts),
                                   _run(lambda: {**_flux_call(), "control_image": _image(16)})),
    # the image's context tokens follow the latents' and are cut from each output, as the pipeline does
    "FluxKontextInpaintPipeline": Case(_build("FluxKontextInpaintPipeline", _flux_parts),
                                       _run(lambda: {**_flux_call(), "image": _image(16), "mask_image": _mask(),
                                                     "max_area": 16 * 16, "_auto_resize": False})),
    "ChromaImg2ImgPipeline": Case(_build("ChromaImg2ImgPipeline", _chroma_parts),
                                  _run(lambda: {**_chroma_call(), "image": _image(16), "strength": 0.75}, 4 / 3)),
    # `true_cfg_scale` is in its signature but unused: `guidance_scale` turns CFG on
    "ChromaInpaintPipeline": Case(_build("ChromaInpaintPipeline", _chroma_inpaint_parts),
                                  _run(lambda: {**_chroma_call(), "image": _image(16), "mask_image": _mask(),
                                                "strength": 0.75}, 4 / 3)),
    "Flux2KleinPipeline": Case(_build("Flux2KleinPipeline", _flux2_parts), _run(_flux2_call)),
    "Flux2KleinInpaintPipeline": Case(_build("Flux2KleinInpaintPipeline", _flux2_parts),
                                      _run(lambda: {**_flux2_call(), "image": _image(16), "mask_image": _mask(),
                                                    "strength": 0.75}, 4 / 3)),
    # written c + s (c - u), CFG on at any s > 0, step-distilled checkpoints included (they only fix `mu`)
    "Krea2Pipeline": Case(_build("Krea2Pipeline", _krea2_parts), _run(_krea2_call)),
    "BriaPipeline": Case(_build("BriaPipeline", _bria_parts), _run(_bria_call)),
    "BriaFiboPipeline": Case(_build("BriaFiboPipeline", _fibo_parts), _run(lambda: dict(_FIBO_CALL))),
    "BriaFiboEditPipeline": Case(_build("BriaFiboEditPipeline", _fibo_edit_parts), _run(_fibo_edit_call)),
    "BriaFibo2Pipeline": Case(_build("BriaFibo2Pipeline", _fibo2_parts), _run(_fibo2_call)),
    "CogView4ControlPipeline": Case(_build("CogView4ControlPipeline", _cogview4_control_parts),
                                    _run(lambda: {**tiny_control.FAMILIES["cogview4"][1],
                                                  "control_image": _image(32)})),
    # without a negative prompt its uncond pass reads zero embeddings (it replaces any negative embeddings passed)
    "CogView3PlusPipeline": Case(_build("CogView3PlusPipeline", _cogview3plus_parts), _run(_cogview3_call)),
}
