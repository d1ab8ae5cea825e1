"""Tiny randomly initialised control, inpainting and more text-to-image pipelines for offline tests.

Builds on tiny_pipelines (same seeds, same tiny VAEs and text encoders). Pipelines whose text encoders are
big or custom (Kolors' ChatGLM, AuraFlow's UMT5, CogView4's GLM, HunyuanDiT's BERT + mT5) get None and
are called with fixed random `prompt_embeds` / `negative_prompt_embeds` (and masks); Kandinsky 5 likewise.
"""

from __future__ import annotations

import torch
from tiny_pipelines import _no_bar, _sd_unet, _sd_vae, make_scheduler
from tiny_pipelines import tiny_pixart_sigma_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

from diffusers import (
    AuraFlowPipeline,
    AutoencoderKL,
    AuraFlowTransformer2DModel,
    CogView4Pipeline,
    CogView4Transformer2DModel,
    ControlNetModel,
    FlowMatchEulerDiscreteScheduler,
    HunyuanDiT2DModel,
    HunyuanDiTPipeline,
    Kandinsky5T2VPipeline,
    Kandinsky5Transformer3DModel,
    KolorsPipeline,
    PixArtAlphaPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLInpaintPipeline,
    ZImagePipeline,
    ZImageTransformer2DModel,
)

_SDXL_UNET = dict(
    attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), norm_num_groups=1,
)


def _controlnet(sdxl: bool = False):
    torch.manual_seed(4)
    extra = dict(_SDXL_UNET, cross_attention_dim=64, projection_class_embeddings_input_dim=6 * 8 + 32) if sdxl else \
        dict(cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2)
    return ControlNetModel(
        block_out_channels=(4, 8), layers_per_block=1, in_channels=4, conditioning_embedding_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), **extra,
    ).eval()


def _inpaint_unet(sdxl: bool):
    """9 input channels: latents, mask, masked-image latents."""
    if sdxl:
        return _sd_unet(in_channels=9, cross_attention_dim=64, projection_class_embeddings_input_dim=6 * 8 + 32,
                        **_SDXL_UNET)
    return _sd_unet(in_channels=9)


def tiny_sd_controlnet_pipeline(scheduler="ddim", prediction_type="epsilon"):
    base = tiny_sd_pipeline(scheduler, prediction_type).components
    return _no_bar(StableDiffusionControlNetPipeline(**base, controlnet=_controlnet()))


def tiny_sdxl_controlnet_pipeline(scheduler="euler", prediction_type="epsilon"):
    base = tiny_sdxl_pipeline(scheduler, prediction_type).components
    return _no_bar(StableDiffusionXLControlNetPipeline(**base, controlnet=_controlnet(sdxl=True)))


def tiny_sd_inpaint_pipeline(scheduler="ddim", prediction_type="epsilon", unet_channels=9):
    base = tiny_sd_pipeline(scheduler, prediction_type).components
    if unet_channels == 9:
        base["unet"] = _inpaint_unet(sdxl=False)
    return _no_bar(StableDiffusionInpaintPipeline(**base))


def tiny_sdxl_inpaint_pipeline(scheduler="euler", prediction_type="epsilon", unet_channels=9):
    base = tiny_sdxl_pipeline(scheduler, prediction_type).components
    if unet_channels == 9:
        base["unet"] = _inpaint_unet(sdxl=True)
    return _no_bar(StableDiffusionXLInpaintPipeline(**base, requires_aesthetics_score=False))


def tiny_pixart_alpha_pipeline(scheduler="dpmpp_2m", prediction_type="epsilon"):
    return _no_bar(PixArtAlphaPipeline(**tiny_pixart_sigma_pipeline(scheduler, prediction_type).components))


def tiny_sd3_img2img_pipeline(scheduler="flow_euler"):
    return _no_bar(StableDiffusion3Img2ImgPipeline(**tiny_sd3_pipeline(scheduler).components))


def tiny_kolors_pipeline(scheduler="euler", prediction_type="epsilon"):
    """Kolors' UNet: SDXL-style, with ChatGLM's 4096-wide hidden states projected (`text_proj`); here 16 wide."""
    unet = _sd_unet(cross_attention_dim=32, projection_class_embeddings_input_dim=6 * 8 + 16,
                    encoder_hid_dim=16, encoder_hid_dim_type="text_proj", **_SDXL_UNET)
    return _no_bar(KolorsPipeline(
        vae=_sd_vae(), text_encoder=None, tokenizer=None, unet=unet,
        scheduler=make_scheduler(scheduler, prediction_type), image_encoder=None, feature_extractor=None,
    ))


def tiny_auraflow_pipeline(scheduler="flow_euler"):
    torch.manual_seed(0)
    transformer = AuraFlowTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=64,
    ).eval()
    with torch.no_grad():  # random init leaves the adaLN gates ~0.01: the text would barely reach the image tokens
        for param in transformer.time_step_proj.parameters():
            param.mul_(10.0)
    return _no_bar(AuraFlowPipeline(tokenizer=None, text_encoder=None, vae=_sd_vae(), transformer=transformer,
                                    scheduler=make_scheduler(scheduler)))


def tiny_cogview4_pipeline():
    """CogView4 with its shipped scheduler: FlowMatch Euler, linear dynamic shifting (the pipeline passes `mu`)."""
    torch.manual_seed(0)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=32, time_embed_dim=8, condition_dim=4, pos_embed_max_size=16, sample_size=16,
        rope_axes_dim=(4, 4),
    ).eval()
    return _no_bar(CogView4Pipeline(tokenizer=None, text_encoder=None, vae=_sd_vae(), transformer=transformer,
                                    scheduler=FlowMatchEulerDiscreteScheduler(
                                        use_dynamic_shifting=True, base_shift=0.25, max_shift=0.75,
                                        base_image_seq_len=256, time_shift_type="linear")))


def tiny_hunyuandit_pipeline(scheduler="ddpm", prediction_type="v_prediction"):
    """HunyuanDiT with learned-sigma output channels (learn_sigma: 8 out for 4 in), v-prediction; 8x8 latents."""
    torch.manual_seed(0)
    transformer = HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=16, hidden_size=16,
        num_layers=1, cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16, text_len=8,
        text_len_t5=8,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(  # 4 blocks: the pipeline's rotary grid assumes a VAE scale factor of 8
        block_out_channels=(4, 4, 4, 4), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=2,
    ).eval()
    return _no_bar(HunyuanDiTPipeline(
        vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
        scheduler=make_scheduler(scheduler, prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, text_encoder_2=None, tokenizer_2=None,
    ))


def tiny_kandinsky5_t2v_pipeline(shift=5.0):
    """Kandinsky 5 text-to-video, channels-last latents [B, T, H, W, C]: one latent frame of 4x4 (VAE: None)."""
    torch.manual_seed(0)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 2, 2),
    ).eval()
    with torch.no_grad():  # the modulation and output layers start at zero: the output would not depend on text
        for param in transformer.parameters():
            if not param.any():
                param.normal_(0.0, 0.2)
    return _no_bar(Kandinsky5T2VPipeline(
        transformer=transformer, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
    ))


def tiny_z_image_pipeline():
    """Z-Image: its transformer takes and returns lists of [C, 1, H, W] per sample; FlowMatch Euler, as shipped."""
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=1, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32],
    ).eval()
    return _no_bar(ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0), vae=_sd_vae(),
        text_encoder=None, tokenizer=None, transformer=transformer,
    ))


# -- calls --------------------------------------------------------------------------------------------------
def _rand(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


IMAGE = _rand(1, 3, 32, 32, seed=1)  # [1, 3, H, W] in [0, 1]: init image and control image
MASK = (torch.arange(32)[None, None, :, None] >= 16).float().expand(1, 1, 32, 32)  # [1, 1, H, W]: bottom half
_PROMPT = {"prompt": "a photo of a cat", "negative_prompt": "a blue car", "height": 32, "width": 32}


def _embeds(width, tokens=8, pooled=None, mask_names=None, suffix=""):
    """Positive and negative text embeddings (and pooled ones, and all-ones masks) as call kwargs."""
    out = {f"prompt_embeds{suffix}": _randn(1, tokens, width, seed=10 + width),
           f"negative_prompt_embeds{suffix}": _randn(1, tokens, width, seed=20 + width)}
    if pooled:
        out["pooled_prompt_embeds"] = _randn(1, pooled, seed=30)
        out["negative_pooled_prompt_embeds"] = _randn(1, pooled, seed=40)
    for name in mask_names or ():
        out[name] = torch.ones(1, tokens, dtype=torch.long)
    return out


_HUNYUAN_MASKS = ("prompt_attention_mask{}", "negative_prompt_attention_mask{}")
# family -> (builder, call kwargs); latents of 16x16 or fewer (SD3 img2img: 32x32, its VAE does not downsample).
FAMILIES = {
    "sd_controlnet": (tiny_sd_controlnet_pipeline, {**_PROMPT, "image": IMAGE}),
    "sdxl_controlnet": (tiny_sdxl_controlnet_pipeline, {**_PROMPT, "image": IMAGE}),
    "sd_inpaint": (tiny_sd_inpaint_pipeline, {**_PROMPT, "image": IMAGE, "mask_image": MASK}),
    "sd_inpaint_4ch": (lambda **kw: tiny_sd_inpaint_pipeline(unet_channels=4, **kw),
                       {**_PROMPT, "image": IMAGE, "mask_image": MASK, "strength": 0.75}),
    "sdxl_inpaint": (tiny_sdxl_inpaint_pipeline, {**_PROMPT, "image": IMAGE, "mask_image": MASK}),
    "pixart_alpha": (tiny_pixart_alpha_pipeline,
                     {**_PROMPT, "max_sequence_length": 16, "use_resolution_binning": False, "clean_caption": False}),
    "sd3_img2img": (tiny_sd3_img2img_pipeline,
                    {**_PROMPT, "image": IMAGE, "strength": 0.75, "max_sequence_length": 16}),
    "kolors": (tiny_kolors_pipeline, {"height": 32, "width": 32, **_embeds(16, pooled=16)}),
    "auraflow": (tiny_auraflow_pipeline, {"height": 32, "width": 32, **_embeds(32, mask_names=(
        "prompt_attention_mask", "negative_prompt_attention_mask"))}),
    "cogview4": (tiny_cogview4_pipeline, {"height": 32, "width": 32, **_embeds(32, tokens=16)}),
    "hunyuandit": (tiny_hunyuandit_pipeline, {
        "height": 64, "width": 64, "use_resolution_binning": False,
        **_embeds(32, mask_names=[m.format("") for m in _HUNYUAN_MASKS]),
        **_embeds(32, mask_names=[m.format("_2") for m in _HUNYUAN_MASKS], suffix="_2"),
    }),
    "kandinsky5_t2v": (tiny_kandinsky5_t2v_pipeline, {
        "height": 32, "width": 32, "num_frames": 1,
        "prompt_embeds_qwen": _randn(1, 6, 16, seed=1), "prompt_embeds_clip": _randn(1, 8, seed=2),
        "negative_prompt_embeds_qwen": _randn(1, 6, 16, seed=3), "negative_prompt_embeds_clip": _randn(1, 8, seed=4),
        "prompt_cu_seqlens": torch.tensor([0, 6], dtype=torch.int32),
        "negative_prompt_cu_seqlens": torch.tensor([0, 6], dtype=torch.int32),
    }),
    "z_image": (tiny_z_image_pipeline, {
        "height": 32, "width": 32, "prompt_embeds": [_randn(6, 16, seed=1)],
        "negative_prompt_embeds": [_randn(6, 16, seed=2)],
    }),
}


def call(pipe, family: str, steps: int = 3, seed: int = 0, **kwargs) -> torch.Tensor:
    """Run `pipe` like FAMILIES[family] with a fresh seeded generator; the latents as a tensor."""
    out = pipe(**{"output_type": "latent", **FAMILIES[family][1], **kwargs}, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(seed))
    return torch.as_tensor(out[0])
