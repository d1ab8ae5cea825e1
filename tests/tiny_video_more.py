"""Tiny cases of issue 17's family video_more (Wan VACE / video-to-video / Animate, SkyReels-V2, ChronoEdit,
Kandinsky 5, HunyuanVideo image-to-video, Sana video): random components built in code, prompt embeds in the call."""

from __future__ import annotations

import torch
from PIL import Image
from tiny_control import _randn, tiny_kandinsky5_t2v_pipeline
from tiny_pipelines import FAMILIES as IMAGE_FAMILIES
from tiny_pipelines import tiny_sana_pipeline
from tiny_registry import Case
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel
from tiny_video import (_clip_image_encoder, _embeds, _no_bar, _wan_transformer, _wan_vae, flow_scheduler,
                        hunyuan_video_call, tiny_hunyuan_video_pipeline, wan_call)

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    HunyuanSkyreelsImageToVideoPipeline,
    HunyuanVideoFramepackPipeline,
    HunyuanVideoFramepackTransformer3DModel,
    HunyuanVideoImageToVideoPipeline,
    HunyuanVideoTransformer3DModel,
    Kandinsky5I2IPipeline,
    Kandinsky5I2VPipeline,
    Kandinsky5T2IPipeline,
    Kandinsky5Transformer3DModel,
    LucyEditPipeline,
    WanAnimatePipeline,
    WanAnimateTransformer3DModel,
    SanaControlNetModel,
    SanaControlNetPipeline,
    SanaImageToVideoPipeline,
    SanaVideoPipeline,
    SanaVideoTransformer3DModel,
    ChronoEditPipeline,
    ChronoEditTransformer3DModel,
    SkyReelsV2ImageToVideoPipeline,
    SkyReelsV2Pipeline,
    SkyReelsV2Transformer3DModel,
    WanVACEPipeline,
    WanVACETransformer3DModel,
    WanVideoToVideoPipeline,
)

CASES: dict[str, Case] = {}


def _case(build, call):
    """A Case whose run is `call()`'s arguments plus the seeded generator, step count and `extra`; the latents."""

    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(**{"output_type": "latent", **call(), **extra}, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(seed))
        return torch.as_tensor(out[0])

    return Case(build, run)


def _video(frames=5, size=32, seed=12):
    """[1, F, 3, H, W] in [0, 1], the layout of a tensor video for Diffusers' video processor."""
    return torch.rand(1, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- Wan VACE: control video and mask through vace blocks; the same two passes as Wan --------------------------
def _wan_vace():
    torch.manual_seed(0)
    transformer = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, vace_layers=[0], vace_in_channels=16 * 2 + 8 * 8,  # inactive, reactive, 8x8 mask
    ).eval()
    return _no_bar(WanVACEPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), transformer=transformer,
                                   scheduler=flow_scheduler("euler")))


CASES["WanVACEPipeline"] = _case(_wan_vace, wan_call)


# -- Wan video-to-video: the input video noised to `strength` -------------------------------------------------
def _wan_v2v():
    return _no_bar(WanVideoToVideoPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(),
                                           transformer=_wan_transformer(0), scheduler=flow_scheduler("euler")))


def _wan_v2v_call():
    call = {**wan_call(), "video": _video(), "strength": 1.0}
    del call["num_frames"]  # the video's
    return call


CASES["WanVideoToVideoPipeline"] = _case(_wan_v2v, _wan_v2v_call)


# -- Lucy Edit: Wan 2.2's two experts on [latents, encoded video] (32 channels in, 16 out) ------------------------
def _lucy_edit():
    return _no_bar(LucyEditPipeline(
        tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=flow_scheduler("euler"),
        transformer=_wan_transformer(0, in_channels=32), transformer_2=_wan_transformer(1, in_channels=32),
        boundary_ratio=0.9,
    ))


CASES["LucyEditPipeline"] = _case(_lucy_edit, lambda: {**wan_call(), "video": _video()})


# -- Wan Animate: [latents, reference, pose-side] channels (36 in, 16 out), a face video through a motion encoder --
def _wan_animate():
    torch.manual_seed(0)
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, latent_channels=16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=4, motion_encoder_size=16,
        motion_encoder_channel_sizes={"4": 8, "8": 8, "16": 8}, motion_style_dim=8, motion_dim=4,
        motion_encoder_dim=8, face_encoder_hidden_dim=8, face_encoder_num_heads=2, inject_face_latents_blocks=1,
    ).eval()
    image_encoder, image_processor = _clip_image_encoder()
    return _no_bar(WanAnimatePipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), transformer=transformer,
                                      scheduler=flow_scheduler("unipc"), image_encoder=image_encoder,
                                      image_processor=image_processor))


def _wan_animate_call():
    """One segment of 5 frames (32x32 pose video, 16x16 face video: the motion encoder's size)."""
    pose = [Image.new("RGB", (32, 32), (40 * i, 80, 120)) for i in range(5)]
    face = [Image.new("RGB", (16, 16), (40 * i, 30, 20)) for i in range(5)]
    call = {**wan_call(), "image": Image.new("RGB", (32, 32), (200, 100, 50)), "pose_video": pose,
            "face_video": face, "segment_frame_length": 5}
    del call["num_frames"]  # the segment's
    return call


CASES["WanAnimatePipeline"] = _case(_wan_animate, _wan_animate_call)


# -- SkyReels-V2: Wan's loop on its own transformer (image-to-video: [latents, frame mask, image] channels) -------
def _skyreels(image_to_video=False):
    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36 if image_to_video else 16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=4 if image_to_video else None,
    ).eval()
    parts = dict(tokenizer=None, text_encoder=None, vae=_wan_vae(), transformer=transformer,
                 scheduler=flow_scheduler("unipc"))
    if not image_to_video:
        return _no_bar(SkyReelsV2Pipeline(**parts))
    image_encoder, image_processor = _clip_image_encoder()
    return _no_bar(SkyReelsV2ImageToVideoPipeline(**parts, image_encoder=image_encoder,
                                                  image_processor=image_processor))


CASES["SkyReelsV2Pipeline"] = _case(_skyreels, wan_call)
CASES["SkyReelsV2ImageToVideoPipeline"] = _case(lambda: _skyreels(True), lambda: wan_call(True))


# -- ChronoEdit: Wan image-to-video layout (36 channels in), 5 frames unless temporal reasoning -----------------
def _chronoedit():
    torch.manual_seed(0)
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=4,
    ).eval()
    image_encoder, image_processor = _clip_image_encoder()
    return _no_bar(ChronoEditPipeline(tokenizer=None, text_encoder=None, vae=_wan_vae(), transformer=transformer,
                                      scheduler=flow_scheduler("euler"), image_encoder=image_encoder,
                                      image_processor=image_processor))


CASES["ChronoEditPipeline"] = _case(_chronoedit, lambda: wan_call(True))


# -- Kandinsky 5 image and image-to-video: channels-last latents [B, T, H, W, C] --------------------------------
def _kandinsky5_transformer(visual_cond):
    """Kandinsky 5's tiny transformer (tests/tiny_control.py's), `visual_cond`: [latents, condition, mask] in."""
    if not visual_cond:
        return tiny_kandinsky5_t2v_pipeline().transformer
    torch.manual_seed(0)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 2, 2), visual_cond=True,
    ).eval()
    with torch.no_grad():  # zero-initialised modulation and output layers: the output would not depend on text
        for param in transformer.parameters():
            if not param.any():
                param.normal_(0.0, 0.2)
    return transformer


def _kandinsky5_vae():
    """4 latent channels at 1/8 the size (the image pipelines' fixed vae_scale_factor_spatial)."""
    torch.manual_seed(3)
    return AutoencoderKL(
        block_out_channels=(4, 4, 4, 4), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=2,
        sample_size=32,
    ).eval()


def _kandinsky5(cls, visual_cond, vae):
    pipe = cls(transformer=_kandinsky5_transformer(visual_cond), vae=vae, text_encoder=None, tokenizer=None,
               text_encoder_2=None, tokenizer_2=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    if hasattr(pipe, "resolutions"):
        pipe.resolutions = [(32, 32)]  # the image pipelines snap other sizes to their 1024-pixel list
    return _no_bar(pipe)


def _kandinsky5_call(**extra):
    return {"height": 32, "width": 32, "prompt_embeds_qwen": _randn(1, 6, 16, seed=1),
            "prompt_embeds_clip": _randn(1, 8, seed=2), "negative_prompt_embeds_qwen": _randn(1, 6, 16, seed=3),
            "negative_prompt_embeds_clip": _randn(1, 8, seed=4),
            "prompt_cu_seqlens": torch.tensor([0, 6], dtype=torch.int32),
            "negative_prompt_cu_seqlens": torch.tensor([0, 6], dtype=torch.int32), **extra}


_IMAGE = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
CASES["Kandinsky5T2IPipeline"] = _case(lambda: _kandinsky5(Kandinsky5T2IPipeline, False, None), _kandinsky5_call)
CASES["Kandinsky5I2IPipeline"] = _case(lambda: _kandinsky5(Kandinsky5I2IPipeline, True, _kandinsky5_vae()),
                                       lambda: _kandinsky5_call(image=_IMAGE))
CASES["Kandinsky5I2VPipeline"] = _case(
    lambda: _kandinsky5(Kandinsky5I2VPipeline, True, tiny_hunyuan_video_pipeline().vae),
    lambda: _kandinsky5_call(image=_IMAGE, num_frames=21))  # 6 latent frames: its final first-frame fix needs > 4


# -- HunyuanVideo image-to-video: true CFG; the image as extra channels (latent_concat) or as frame 0 ------------
def _hunyuan_i2v(condition="latent_concat", cls=HunyuanVideoImageToVideoPipeline):
    """HunyuanVideo I2V (`condition`: its image_condition_type) or, with condition None, SkyReels' [latents, image]."""
    in_channels = {"latent_concat": 2 * 4 + 1, "token_replace": 4, None: 2 * 4}[condition]
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=in_channels, out_channels=4, num_attention_heads=2,
        attention_head_dim=10, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
        patch_size_t=1, guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
        image_condition_type=condition,
    ).eval()
    stock = tiny_hunyuan_video_pipeline()  # its VAE and scheduler
    parts = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, vae=stock.vae,
                 transformer=transformer, scheduler=stock.scheduler)
    if cls is HunyuanVideoImageToVideoPipeline:
        parts["image_processor"] = None  # the image reaches the text encoder only, which the embeds replace
    return _no_bar(cls(**parts))


def _hunyuan_i2v_call():
    return {**hunyuan_video_call(), "image": _IMAGE, "guidance_scale": 1.0}


CASES["HunyuanVideoImageToVideoPipeline"] = _case(_hunyuan_i2v, _hunyuan_i2v_call)
CASES["HunyuanVideoImageToVideoPipeline/token_replace"] = _case(lambda: _hunyuan_i2v("token_replace"),
                                                                _hunyuan_i2v_call)
CASES["HunyuanSkyreelsImageToVideoPipeline"] = _case(
    lambda: _hunyuan_i2v(None, HunyuanSkyreelsImageToVideoPipeline), _hunyuan_i2v_call)


# -- HunyuanVideo FramePack: one latent section of 3 frames, history latents and a SigLIP image embedding ---------
def _framepack():
    torch.manual_seed(0)
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
        has_image_proj=True, image_proj_dim=32, has_clean_x_embedder=True,
    ).eval()
    torch.manual_seed(4)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=32, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16,
    )).eval()
    stock = tiny_hunyuan_video_pipeline()  # its VAE and scheduler
    return _no_bar(HunyuanVideoFramepackPipeline(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, vae=stock.vae,
        transformer=transformer, scheduler=stock.scheduler, image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    ))


def _framepack_run(pipe, steps=3, seed=0, **extra):
    """Its latent output is the section history as a one-element list."""
    call = {**hunyuan_video_call(), "image": _IMAGE, "num_frames": 9, "latent_window_size": 3}  # one section
    out = pipe(**{"output_type": "latent", **call, **extra}, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(seed))
    return out[0][0]


CASES["HunyuanVideoFramepackPipeline"] = Case(_framepack, _framepack_run)


# -- Sana ControlNet: tests/tiny_pipelines.py's Sana, a ControlNet on the same [uncond, cond] batch ---------------
def _sana_controlnet():
    sana = tiny_sana_pipeline()
    torch.manual_seed(1)
    controlnet = SanaControlNetModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=16,
    ).eval()
    return _no_bar(SanaControlNetPipeline(**sana.components, controlnet=controlnet))


CASES["SanaControlNetPipeline"] = _case(_sana_controlnet,
                                        lambda: {**IMAGE_FAMILIES["sana"][2], "control_image": _IMAGE})


# -- Sana video: Sana's text side (tests/tiny_pipelines.py) on Wan's VAE; image-to-video steps frames 1: ---------
def _sana_video(cls=SanaVideoPipeline):
    sana = tiny_sana_pipeline()
    torch.manual_seed(0)
    transformer = SanaVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=8,
        sample_size=4, rope_max_seq_len=32,
    ).eval()
    return _no_bar(cls(tokenizer=sana.tokenizer, text_encoder=sana.text_encoder, vae=_wan_vae(),
                       transformer=transformer, scheduler=sana.scheduler))


def _sana_video_call(**extra):
    return {**IMAGE_FAMILIES["sana"][2], "frames": 5, **extra}  # 2 latent frames of 4x4


CASES["SanaVideoPipeline"] = _case(_sana_video, _sana_video_call)
CASES["SanaImageToVideoPipeline"] = _case(lambda: _sana_video(SanaImageToVideoPipeline),
                                          lambda: _sana_video_call(image=_IMAGE))
