"""Tiny randomly initialised Diffusers pipelines for offline tests: nothing comes from a hub.

`tiny_sd_pipeline()` is a stable entry point used by other parts of the project (the Gradio app tests).
Every builder seeds torch itself, so two calls give identical weights.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import devices
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Gemma2Config,
    Gemma2Model,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

import diffusers
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DiTPipeline,
    DiTTransformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

WORDS = ["a", "an", "the", "photo", "of", "cat", "dog", "red", "blue", "car", "house", "tree", "painting", "on", "in"]
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
            "steps_offset": 1}

# name -> (Diffusers scheduler class, config overrides); "flow" ones are for flow-matching models.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
FLOW_SCHEDULERS = {
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
    "dpmpp_2m_flow": (
        "DPMSolverMultistepScheduler",
        # Flux always passes `mu`: DPM-Solver accepts it only with exponential dynamic shifting.
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0, "solver_order": 2,
         "use_dynamic_shifting": True, "time_shift_type": "exponential"},
    ),
    "unipc_flow": (
        "UniPCMultistepScheduler",
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    ),
}


def make_scheduler(name: str, prediction_type: str | None = None):
    """A fresh scheduler by short name (see SCHEDULERS, FLOW_SCHEDULERS)."""
    if name in FLOW_SCHEDULERS:
        cls_name, config = FLOW_SCHEDULERS[name]
        config = dict(config)
    else:
        cls_name, config = SCHEDULERS[name]
        config = {**SD_BETAS, **config, "prediction_type": prediction_type or "epsilon"}
    return getattr(diffusers, cls_name)(**config)


# -- tokenizers ---------------------------------------------------------------------------------------------
def clip_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """Byte-level CLIP BPE tokenizer from a small vocab.json + merges.txt (no merges: one token per byte)."""
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(folder, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)


def word_tokenizer(kind: str = "t5") -> PreTrainedTokenizerFast:
    """T5-style (appends </s>) or Gemma-style (prepends <bos>) word-level tokenizer built in code."""
    specials = ["<pad>", "</s>", "<unk>", "<bos>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "t5":
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
        )
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<bos>"
    )


# -- text encoders ------------------------------------------------------------------------------------------
def _clip_text(tokenizer, projection_dim=None, hidden_size=32):
    torch.manual_seed(1)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim or hidden_size,
    )
    return (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config).eval()


def _t5(d_model=32):
    torch.manual_seed(2)
    config = T5Config(vocab_size=32, d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def _sd_vae(latent_channels=4):
    torch.manual_seed(3)
    return AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=2,
        sample_size=32,
    ).eval()


def _flow_vae(latent_channels):
    torch.manual_seed(3)
    return AutoencoderKL(
        block_out_channels=(4,), in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=1,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035, sample_size=32,
    ).eval()


def count_rows(pipe) -> list:
    """Batch rows of every denoiser evaluation, appended to the returned list: counted in the forward that apg's
    skipping calls, so a skipped pass is not counted and a cut batch counts its rows."""
    from apg.registry import spec_for

    rows, spec = [], spec_for(pipe)
    for module in [getattr(pipe, spec.denoiser)] + [m for quirk in spec.quirks for m in quirk.modules(pipe)]:
        inner = module.forward

        @functools.wraps(inner)
        def counting(*args, _inner=inner, **kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            rows.append(len(first) if isinstance(first, list) else first.shape[0])
            return _inner(*args, **kwargs)

        module.forward = counting
    return rows


def rel_diff(a, b) -> float:
    """||a - b|| / ||b|| in float64: how far a pipeline output is from a reference."""
    return float((a.double() - b.double()).norm() / b.double().norm())


# -- pipelines ----------------------------------------------------------------------------------------------
def _no_bar(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(devices.current)  # the test device in device-aware test modules (tests/devices.py)


def _sd_unet(**extra):
    torch.manual_seed(0)
    config = dict(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2,
    )
    return UNet2DConditionModel(**{**config, **extra}).eval()


def tiny_sd_pipeline(
    scheduler: str = "ddim", prediction_type: str = "epsilon", img2img: bool = False, unet_channels=(4, 8)
):
    """Tiny Stable Diffusion (UNet 4/8 channels, 32x32 images, 16x16 latents) with a DDIM scheduler by default."""
    tokenizer = clip_tokenizer()
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    unet = _sd_unet(block_out_channels=tuple(unet_channels), norm_num_groups=min(unet_channels) // 2)
    return _no_bar(cls(
        vae=_sd_vae(), text_encoder=_clip_text(tokenizer), tokenizer=tokenizer, unet=unet,
        scheduler=make_scheduler(scheduler, prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ))


def tiny_sdxl_pipeline(scheduler: str = "euler", prediction_type: str = "epsilon", img2img: bool = False):
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    unet = _sd_unet(
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), cross_attention_dim=64, norm_num_groups=1,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + the pooled text projection
    )
    cls = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
    extra = {"requires_aesthetics_score": False} if img2img else {}
    return _no_bar(cls(
        vae=_sd_vae(), text_encoder=_clip_text(tokenizer), text_encoder_2=_clip_text(tokenizer_2, projection_dim=32),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=make_scheduler(scheduler, prediction_type),
        image_encoder=None, feature_extractor=None, **extra,
    ))


def tiny_sd3_pipeline(scheduler: str = "flow_euler"):
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    ).eval()
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    return _no_bar(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=make_scheduler(scheduler), vae=_flow_vae(4),
        text_encoder=_clip_text(tokenizer, projection_dim=32), tokenizer=tokenizer,
        text_encoder_2=_clip_text(tokenizer_2, projection_dim=32), tokenizer_2=tokenizer_2,
        text_encoder_3=_t5(), tokenizer_3=word_tokenizer("t5"),
    ))


def tiny_pixart_sigma_pipeline(scheduler: str = "dpmpp_2m", prediction_type: str = "epsilon"):
    """PixArt-Sigma with learned-sigma output channels (out_channels = 2 x latent channels)."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=32,
        in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()
    return _no_bar(PixArtSigmaPipeline(
        tokenizer=word_tokenizer("t5"), text_encoder=_t5(), vae=_sd_vae(), transformer=transformer,
        scheduler=make_scheduler(scheduler, prediction_type),
    ))


def tiny_sana_pipeline(scheduler: str = "dpmpp_2m_flow"):
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=16,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()
    torch.manual_seed(2)
    text_encoder = Gemma2Model(Gemma2Config(
        head_dim=16, hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
        num_key_value_heads=2, vocab_size=32, pad_token_id=0, bos_token_id=3, eos_token_id=1,
        max_position_embeddings=1024,
    )).eval()
    return _no_bar(SanaPipeline(
        tokenizer=word_tokenizer("gemma"), text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=make_scheduler(scheduler),
    ))


def tiny_dit_pipeline(scheduler: str = "ddim", prediction_type: str = "epsilon"):
    """Class-conditional DiT with learned-sigma output channels; 8x8 latents."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    ).eval()
    scheduler = make_scheduler(scheduler, prediction_type)
    return _no_bar(DiTPipeline(transformer=transformer, vae=_sd_vae(), scheduler=scheduler))


def tiny_flux_pipeline(scheduler: str = "flow_euler"):
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()
    tokenizer = clip_tokenizer()
    return _no_bar(FluxPipeline(
        scheduler=make_scheduler(scheduler), vae=_flow_vae(1), text_encoder=_clip_text(tokenizer), tokenizer=tokenizer,
        text_encoder_2=_t5(), tokenizer_2=word_tokenizer("t5"), transformer=transformer,
    ))


# -- calls --------------------------------------------------------------------------------------------------
def _image():
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # [1, 3, H, W] in [0, 1]


_PROMPT = {"prompt": "a photo of a cat", "negative_prompt": "a blue car"}
_SHORT = {"max_sequence_length": 16}
# family -> (builder, scale argument, call kwargs); each call is tiny: 2 steps, latents of 16x16 or fewer.
FAMILIES = {
    "sd": (tiny_sd_pipeline, "guidance_scale", {**_PROMPT, "height": 32, "width": 32}),
    "sd_img2img": (
        lambda **kw: tiny_sd_pipeline(img2img=True, **kw), "guidance_scale",
        {**_PROMPT, "image": _image(), "strength": 0.5},
    ),
    "sdxl": (tiny_sdxl_pipeline, "guidance_scale", {**_PROMPT, "height": 32, "width": 32}),
    "sdxl_img2img": (
        lambda **kw: tiny_sdxl_pipeline(img2img=True, **kw), "guidance_scale",
        {**_PROMPT, "image": _image(), "strength": 0.5},
    ),
    "sd3": (tiny_sd3_pipeline, "guidance_scale", {**_PROMPT, **_SHORT, "height": 16, "width": 16}),
    "pixart_sigma": (
        tiny_pixart_sigma_pipeline, "guidance_scale",
        {**_PROMPT, **_SHORT, "height": 32, "width": 32, "use_resolution_binning": False, "clean_caption": False},
    ),
    "sana": (
        tiny_sana_pipeline, "guidance_scale",
        {**_PROMPT, **_SHORT, "height": 32, "width": 32, "use_resolution_binning": False, "clean_caption": False,
         "complex_human_instruction": None},
    ),
    "dit": (tiny_dit_pipeline, "guidance_scale", {"class_labels": [3, 7], "output_type": "np"}),
    "flux": (tiny_flux_pipeline, "true_cfg_scale", {**_PROMPT, **_SHORT, "height": 16, "width": 16}),
}
FLOW_FAMILIES = ("sd3", "sana", "flux")


def call(pipe, family: str, steps: int = 2, seed: int = 0, **kwargs) -> torch.Tensor:
    """Run `pipe` like FAMILIES[family] with a fresh seeded generator; latents (images for DiT) as a tensor."""
    base = {"output_type": "latent", **FAMILIES[family][2]}
    if family.endswith("img2img"):
        steps *= 2  # strength 0.5 runs half of them
    torch.manual_seed(seed)  # DiT steps without its generator: DDPM and ancestral noise come from the global RNG
    out = pipe(**{**base, **kwargs}, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    return torch.as_tensor(out[0])
