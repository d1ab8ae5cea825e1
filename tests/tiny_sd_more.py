"""Tiny cases for issue 17's family sd_more: more Stable Diffusion, SDXL, SD3, Kolors and HunyuanDiT classes
(ControlNet img2img and inpainting, adapters, upscalers, ...), built from tests/tiny_control.py and
tests/tiny_pipelines.py parts."""

from __future__ import annotations

import functools
import inspect

import torch
from tiny_control import (_SDXL_UNET, FAMILIES, IMAGE, MASK, _controlnet, _inpaint_unet, _PROMPT, _rand,
                          tiny_hunyuandit_pipeline, tiny_kolors_pipeline)
from tiny_pipelines import (_flow_vae, _no_bar, _sd_unet, _sd_vae, clip_tokenizer, make_scheduler,
                            tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline)
from tiny_registry import Case
from transformers import BatchEncoding, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

import diffusers
from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer


def _case(build, steps_factor=1, **kwargs):
    """A Case calling the pipeline with `kwargs` (latents out); img2img strengths get `steps_factor` x the steps."""

    def run(pipe, steps=3, seed=0, **extra):
        torch.manual_seed(seed)  # HunyuanDiT's ControlNet samples its control image's latents from the global RNG
        out = pipe(**{"output_type": "latent", **kwargs, **extra}, num_inference_steps=steps * steps_factor,
                   generator=torch.Generator().manual_seed(seed))
        return torch.as_tensor(out[0])

    return Case(build, run)


def _with(base, cls, **parts):
    """A builder of `cls` from `base()`'s components plus `parts`: name -> builder (a ControlNet, a UNet)."""
    cls = getattr(diffusers, cls)
    takes = inspect.signature(cls.__init__).parameters  # the base's components it has no use for are left out

    def build():
        components = {name: part for name, part in base().components.items() if name in takes and name not in parts}
        return _no_bar(cls(**components, **{name: part() for name, part in parts.items()}))

    return build


def _union_controlnet():
    """A ControlNet Union for the tiny SDXL UNet: its control-type transformer is as wide as the first block."""
    torch.manual_seed(4)
    return diffusers.ControlNetUnionModel(
        block_out_channels=(4, 8), layers_per_block=1, in_channels=4, conditioning_embedding_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=64,
        projection_class_embeddings_input_dim=6 * 8 + 32, num_control_type=2, num_trans_channel=4, num_trans_head=1,
        num_proj_channel=4, **_SDXL_UNET,
    ).eval()


_SD3 = dict(sample_size=16, patch_size=1, num_layers=1, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64)  # tiny_sd3_pipeline's


def _sd3_controlnet(extra_conditioning_channels=0):
    """SD3's ControlNet: the inpainting one reads the mask as one more channel of its condition."""
    torch.manual_seed(4)
    return diffusers.SD3ControlNetModel(in_channels=4, out_channels=4,
                                        extra_conditioning_channels=extra_conditioning_channels, **_SD3).eval()


def _sd3_transformer_16(in_channels=16):
    """16 latent channels, as shipped: SD3 inpainting blends the known region back after each step, or with 33
    input channels (latents, mask, masked image) concatenates them."""
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(in_channels=in_channels, out_channels=16, **_SD3).eval()


class _CharTokenizer:
    """Kolors' ChatGLM tokenizer as its pipeline calls it (ids, mask, positions): one id per character, no vocab
    file. KolorsImg2ImgPipeline needs a text encoder: its __call__ drops `pooled_prompt_embeds`."""

    def __call__(self, text, max_length, return_tensors="pt", **kwargs):
        texts = [text] if isinstance(text, str) else text
        ids = torch.tensor([[1 + ord(c) % 31 for c in t[:max_length]] + [0] * (max_length - len(t)) for t in texts])
        positions = torch.arange(max_length).expand(len(texts), -1)
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": positions})


def _chatglm():
    """A 1-layer ChatGLM, 16 wide (tiny_kolors_pipeline's UNet projects 16-wide text states), 256 positions."""
    model = ChatGLMModel(ChatGLMConfig(
        num_layers=1, padded_vocab_size=32, hidden_size=16, ffn_hidden_size=32, kv_channels=8, num_attention_heads=2,
        seq_length=256, original_rope=True, use_cache=False)).eval()
    torch.manual_seed(2)
    with torch.no_grad():  # it builds its layers with skip_init: the weights are uninitialised memory
        for param in model.parameters():
            param.normal_(0.0, 0.2) if param.ndim > 1 else param.fill_(1.0)  # 1-d: the RMSNorm weights
    return model


def _adapter():
    """A T2I-Adapter whose features match the tiny UNets' down blocks, added after the first block's downsampling
    and in the second block: 4 then 8 channels, both at 8x8 (the XL type: no downsampling between them)."""
    torch.manual_seed(5)
    return diffusers.T2IAdapter(in_channels=3, channels=[4, 8], num_res_blocks=1, downscale_factor=4,
                                adapter_type="full_adapter_xl").eval()


def _depth_unet():
    """Depth-to-image: latents and the depth map in (5 channels), noise out (4)."""
    return _sd_unet(in_channels=5)


def _clip_vision(projection_dim=32):
    """A CLIP image encoder; image variation's projected embedding (32) is the UNet's one cross-attention token."""
    torch.manual_seed(6)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, projection_dim=projection_dim, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8)).eval()


def tiny_upscale_pipeline():
    """The x4 upscaler: latents and the low-res image in (7 channels), noise out (4); `noise_level` as class label."""
    base = tiny_sd_pipeline().components
    return _no_bar(diffusers.StableDiffusionUpscalePipeline(
        vae=base["vae"], text_encoder=base["text_encoder"], tokenizer=base["tokenizer"],
        unet=_sd_unet(in_channels=7, num_class_embeds=100), low_res_scheduler=diffusers.DDPMScheduler(),
        scheduler=make_scheduler("ddim")))


def tiny_unclip_img2img_pipeline():
    """Stable unCLIP img2img: the noised CLIP image embedding (16) and its noise level's (16) are the class label."""
    base = tiny_sd_pipeline().components
    return _no_bar(diffusers.StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(size=32, crop_size=32), image_encoder=_clip_vision(projection_dim=16),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=16),
        image_noising_scheduler=diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=base["tokenizer"], text_encoder=base["text_encoder"], vae=base["vae"],
        scheduler=make_scheduler("ddim"),
        unet=_sd_unet(class_embed_type="projection", projection_class_embeddings_input_dim=32)))


def tiny_ldm_pipeline():
    """LDM text-to-image: LDMBert (32 wide) for text; a KL VAE (it takes one as well as a VQ one: no quantising)."""
    tokenizer = clip_tokenizer(max_length=77)  # it pads prompts to 77 tokens
    torch.manual_seed(1)
    bert = LDMBertModel(LDMBertConfig(
        vocab_size=len(tokenizer), encoder_layers=1, encoder_ffn_dim=32, encoder_attention_heads=2, head_dim=16,
        d_model=32, init_std=0.5)).eval()  # 0.02 gives prompts too alike to tell APG from CFG in the images
    return _no_bar(diffusers.LDMTextToImagePipeline(vqvae=_sd_vae(), bert=bert, tokenizer=tokenizer, unet=_sd_unet(),
                                                    scheduler=make_scheduler("ddim")))


def tiny_hunyuandit_controlnet_pipeline():
    """HunyuanDiT with 4 layers (its ControlNet feeds the skip connections of the second half: 4 // 2 - 1 blocks)."""
    base = tiny_hunyuandit_pipeline().components
    torch.manual_seed(0)
    transformer = diffusers.HunyuanDiT2DModel.from_config({**base["transformer"].config, "num_layers": 4}).eval()
    cls = diffusers.HunyuanDiT2DControlNetModel
    takes = inspect.signature(cls.__init__).parameters  # from_transformer would drop the pooled projection's width
    torch.manual_seed(4)
    controlnet = cls(**{k: v for k, v in transformer.config.items() if k in takes}, transformer_num_layers=4).eval()
    with torch.no_grad():  # its output blocks start at zero: the control would not reach the transformer
        for param in controlnet.parameters():
            if not param.any():
                param.normal_(0.0, 0.2)
    return _no_bar(diffusers.HunyuanDiTControlNetPipeline(**{**base, "transformer": transformer},
                                                          controlnet=controlnet))


_sd_with = functools.partial(_with, tiny_sd_pipeline)
_sdxl_with = functools.partial(_with, tiny_sdxl_pipeline)
_sd3_with = functools.partial(_with, tiny_sd3_pipeline)
_sdxl_controlnet = functools.partial(_controlnet, sdxl=True)
_sdxl_inpaint_unet = functools.partial(_inpaint_unet, sdxl=True)
_sd_inpaint_unet = functools.partial(_inpaint_unet, sdxl=False)

_IMG2IMG = {"image": IMAGE, "strength": 0.5}  # half the steps run: steps_factor=2
_INPAINT = {"image": IMAGE, "mask_image": MASK}
_UNION = {"control_mode": 1}
_TEXT = {name: _PROMPT[name] for name in ("prompt", "negative_prompt")}  # for calls that take no size
_SD3_CALL = {**_PROMPT, "height": 16, "width": 16, "max_sequence_length": 16}  # its VAE does not downsample

CASES: dict[str, Case] = {
    "StableDiffusionControlNetImg2ImgPipeline": _case(
        _sd_with("StableDiffusionControlNetImg2ImgPipeline", controlnet=_controlnet), steps_factor=2,
        **_PROMPT, **_IMG2IMG, control_image=IMAGE),
    "StableDiffusionControlNetInpaintPipeline": _case(
        _sd_with("StableDiffusionControlNetInpaintPipeline", controlnet=_controlnet, unet=_sd_inpaint_unet),
        **_PROMPT, **_INPAINT, control_image=IMAGE),
    "StableDiffusionXLControlNetImg2ImgPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetImg2ImgPipeline", controlnet=_sdxl_controlnet), steps_factor=2,
        **_PROMPT, **_IMG2IMG, control_image=IMAGE),
    "StableDiffusionXLControlNetInpaintPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetInpaintPipeline", controlnet=_sdxl_controlnet,
                   unet=_sdxl_inpaint_unet), **_PROMPT, **_INPAINT, control_image=IMAGE),
    "StableDiffusionXLControlNetUnionPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetUnionPipeline", controlnet=_union_controlnet),
        **_PROMPT, **_UNION, control_image=IMAGE),
    "StableDiffusionXLControlNetUnionImg2ImgPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetUnionImg2ImgPipeline", controlnet=_union_controlnet), steps_factor=2,
        **_PROMPT, **_IMG2IMG, **_UNION, control_image=IMAGE),
    "StableDiffusionXLControlNetUnionInpaintPipeline": _case(
        _sdxl_with("StableDiffusionXLControlNetUnionInpaintPipeline", controlnet=_union_controlnet),  # 4 channels
        **_PROMPT, **_INPAINT, **_UNION, control_image=IMAGE),
    "KolorsImg2ImgPipeline": _case(
        _with(tiny_kolors_pipeline, "KolorsImg2ImgPipeline", text_encoder=_chatglm, tokenizer=_CharTokenizer),
        steps_factor=2, **_PROMPT, **_IMG2IMG),  # its prompts are 256 tokens: __call__ does not pass its length
    "StableDiffusion3ControlNetPipeline": _case(
        _sd3_with("StableDiffusion3ControlNetPipeline", controlnet=_sd3_controlnet), **_SD3_CALL,
        control_image=IMAGE[..., :16, :16]),
    "StableDiffusion3ControlNetInpaintingPipeline": _case(
        _sd3_with("StableDiffusion3ControlNetInpaintingPipeline",
                  controlnet=functools.partial(_sd3_controlnet, extra_conditioning_channels=1)), **_SD3_CALL,
        control_image=IMAGE[..., :16, :16], control_mask=MASK[..., 8:24, :16]),
    "StableDiffusion3InpaintPipeline": _case(
        _sd3_with("StableDiffusion3InpaintPipeline", vae=functools.partial(_flow_vae, 16),
                  transformer=_sd3_transformer_16), steps_factor=2, **_SD3_CALL, image=IMAGE[..., :16, :16],
        mask_image=MASK[..., 8:24, :16], strength=0.5),
    "StableDiffusionAdapterPipeline": _case(
        _sd_with("StableDiffusionAdapterPipeline", adapter=_adapter), **_PROMPT, image=IMAGE),
    "StableDiffusionXLAdapterPipeline": _case(
        _sdxl_with("StableDiffusionXLAdapterPipeline", adapter=_adapter), **_PROMPT, image=IMAGE),
    "StableDiffusionDepth2ImgPipeline": _case(
        _sd_with("StableDiffusionDepth2ImgPipeline", unet=_depth_unet, depth_estimator=lambda: None,
                 feature_extractor=lambda: None),
        steps_factor=2, **_TEXT, **_IMG2IMG,
        depth_map=IMAGE[:, 0]),
    "StableDiffusionImageVariationPipeline": _case(
        lambda: _no_bar(diffusers.StableDiffusionImageVariationPipeline(
            vae=_sd_vae(), image_encoder=_clip_vision(), unet=_sd_unet(), scheduler=make_scheduler("ddim"),
            safety_checker=None, feature_extractor=CLIPImageProcessor(size=32, crop_size=32),
            requires_safety_checker=False)),
        image=IMAGE, height=32, width=32),
    "StableDiffusionUpscalePipeline": _case(tiny_upscale_pipeline, **_TEXT, image=IMAGE[..., :16, :16]),
    "StableUnCLIPImg2ImgPipeline": _case(tiny_unclip_img2img_pipeline, **_PROMPT, image=IMAGE),
    "LDMTextToImagePipeline": _case(  # images out: it has no latent output; 16x16 latents (it divides by 8)
        tiny_ldm_pipeline, prompt=_PROMPT["prompt"], height=128, width=128, output_type="pt"),
    "HunyuanDiTControlNetPipeline": _case(
        tiny_hunyuandit_controlnet_pipeline, **FAMILIES["hunyuandit"][1], control_image=_rand(1, 3, 64, 64, seed=7)),
    # the other inpainting paths: a 4-channel UNet blends the known region back; 33 channels are concatenated
    "StableDiffusionControlNetInpaintPipeline/4ch": _case(
        _sd_with("StableDiffusionControlNetInpaintPipeline", controlnet=_controlnet), **_PROMPT, **_INPAINT,
        control_image=IMAGE, strength=0.75),
    "StableDiffusion3InpaintPipeline/33ch": _case(
        _sd3_with("StableDiffusion3InpaintPipeline", vae=functools.partial(_flow_vae, 16),
                  transformer=functools.partial(_sd3_transformer_16, 33)), **_SD3_CALL, image=IMAGE[..., :16, :16],
        mask_image=MASK[..., 8:24, :16], strength=1.0),
    # guess mode: the ControlNet runs on the cond half only, its residuals zero for the uncond half
    "StableDiffusionXLControlNetInpaintPipeline/guess_mode": _case(
        _sdxl_with("StableDiffusionXLControlNetInpaintPipeline", controlnet=_sdxl_controlnet,
                   unet=_sdxl_inpaint_unet), **_PROMPT, **_INPAINT, control_image=IMAGE, guess_mode=True),
}
