"""Tiny cases (family module of tests/tiny_registry.py), misc: Z-Image variants, DeepFloyd IF, Kandinsky 2.1 / 2.2 / 3,
Stable Audio (1 and 3), AudioLDM 2, Cosmos 2.5 Predict and PRX. Each builder reuses the tiny parts of tiny_pipelines /
tiny_control / tiny_video and seeds torch itself."""

from __future__ import annotations

import torch
from tiny_control import FAMILIES as CONTROL_FAMILIES
from tiny_control import IMAGE, MASK, _randn, tiny_z_image_pipeline
from tiny_pipelines import _sd_unet, make_scheduler
from tiny_registry import Case

import diffusers

CASES: dict = {}


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _unzero(module):
    """`module` with its zero-initialised parameters drawn at random, so that what they gate reaches the output."""
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.normal_(0.0, 0.2)
    return module


# -- Z-Image variants: the ZImagePipeline parts (tiny_control), its VAE given the shift factor they encode with ------
def _z_image(cls_name, **extra):
    """A Z-Image variant built from tiny_z_image_pipeline's components (+ `extra` modules)."""
    base = tiny_z_image_pipeline()
    base.vae.register_to_config(shift_factor=0.0)  # image-conditioned variants subtract it when encoding
    pipe = getattr(diffusers, cls_name)(**base.components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _z_image_run(**inputs):
    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(**CONTROL_FAMILIES["z_image"][1], **inputs, output_type="latent", num_inference_steps=steps,
                   generator=_generator(seed), **extra)
        return torch.as_tensor(out[0])
    return run


CASES["ZImageImg2ImgPipeline"] = Case(lambda: _z_image("ZImageImg2ImgPipeline"),
                                      _z_image_run(image=IMAGE, strength=0.75))
CASES["ZImageInpaintPipeline"] = Case(lambda: _z_image("ZImageInpaintPipeline"),
                                      _z_image_run(image=IMAGE, mask_image=MASK, strength=0.75))


def _z_image_controlnet(control_in_dim):
    """One control layer at transformer layer 0; shares the transformer's embedders (the pipeline ties them)."""
    torch.manual_seed(5)
    controlnet = diffusers.ZImageControlNetModel(
        control_layers_places=[0], control_refiner_layers_places=[0], control_in_dim=control_in_dim,
        all_patch_size=(2,), all_f_patch_size=(1,), dim=32, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
    ).eval()
    return _unzero(controlnet)  # its output projections start at zero: the control would not reach the transformer


# The control image's 4 latent channels (ControlNet) or control, mask and masked-image latents, 4 + 1 + 4 (inpaint).
CASES["ZImageControlNetPipeline"] = Case(
    lambda: _z_image("ZImageControlNetPipeline", controlnet=_z_image_controlnet(4)),
    _z_image_run(control_image=IMAGE))
CASES["ZImageControlNetInpaintPipeline"] = Case(
    lambda: _z_image("ZImageControlNetInpaintPipeline", controlnet=_z_image_controlnet(9)),
    _z_image_run(image=IMAGE, mask_image=MASK, control_image=IMAGE))


def _z_image_omni():
    """Omni with no condition image: its transformer in omni mode (lists of lists), no SigLIP run."""
    base = tiny_z_image_pipeline()
    pipe = diffusers.ZImageOmniPipeline(**base.components, siglip=None, siglip_processor=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _z_image_omni_run(pipe, steps=3, seed=0, **extra):
    inputs = {**CONTROL_FAMILIES["z_image"][1]}
    inputs["prompt_embeds"] = [inputs["prompt_embeds"]]  # one list of segments per sample
    inputs["negative_prompt_embeds"] = [inputs["negative_prompt_embeds"]]
    out = pipe(**inputs, output_type="latent", num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["ZImageOmniPipeline"] = Case(_z_image_omni, _z_image_omni_run)


# -- DeepFloyd IF: pixel-space UNets with learned-variance output channels (3 image channels in, 6 out) ----------
IF_SIZE = 16  # pixels: the UNet runs on the image itself
IF_IMAGE = _randn(1, 3, IF_SIZE, IF_SIZE, seed=6).clamp(-1, 1)  # [-1, 1], as IF's stages hand images on
IF_LOW = _randn(1, 3, IF_SIZE // 2, IF_SIZE // 2, seed=7).clamp(-1, 1)  # a stage-1 image for the super-resolution ones
IF_MASK = (torch.arange(IF_SIZE)[None, None, :, None] >= IF_SIZE // 2).float().expand(1, 1, IF_SIZE, IF_SIZE)


def _if(cls_name, super_resolution=False):
    """An IF stage; its scheduler's variance is not learned ("fixed_small"): the pipeline steps 3 channels. x0 is not
    clipped, so the test can read it (clipping acts on the guided x0, as on the stock one)."""
    unet = _sd_unet(in_channels=6 if super_resolution else 3, out_channels=6, sample_size=IF_SIZE,
                    **(dict(class_embed_type="timestep") if super_resolution else {}))  # noise level as class label
    extra = dict(image_noising_scheduler=diffusers.DDPMScheduler()) if super_resolution else {}
    scheduler = diffusers.DDPMScheduler(variance_type="fixed_small", clip_sample=False)
    pipe = getattr(diffusers, cls_name)(
        tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _if_run(**inputs):
    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(prompt_embeds=_randn(1, 8, 32, seed=8), negative_prompt_embeds=_randn(1, 8, 32, seed=9),
                   **inputs, output_type="pt", num_inference_steps=steps, generator=_generator(seed), **extra)
        return torch.as_tensor(out[0])
    return run


CASES["IFPipeline"] = Case(lambda: _if("IFPipeline"), _if_run(height=IF_SIZE, width=IF_SIZE))
CASES["IFImg2ImgPipeline"] = Case(lambda: _if("IFImg2ImgPipeline"), _if_run(image=IF_IMAGE, strength=0.75))
CASES["IFInpaintingPipeline"] = Case(lambda: _if("IFInpaintingPipeline"),
                                     _if_run(image=IF_IMAGE, mask_image=IF_MASK, strength=0.75))
CASES["IFSuperResolutionPipeline"] = Case(lambda: _if("IFSuperResolutionPipeline", True),
                                          _if_run(image=IF_LOW, height=IF_SIZE, width=IF_SIZE))
CASES["IFImg2ImgSuperResolutionPipeline"] = Case(lambda: _if("IFImg2ImgSuperResolutionPipeline", True),
                                                 _if_run(image=IF_LOW, original_image=IF_IMAGE, strength=0.75))
CASES["IFInpaintingSuperResolutionPipeline"] = Case(
    lambda: _if("IFInpaintingSuperResolutionPipeline", True),
    _if_run(image=IF_LOW, original_image=IF_IMAGE, mask_image=IF_MASK, strength=0.75))


# -- Kandinsky 3: its own UNet and MoVQ; text embeddings with their masks given ---------------------------------
def _movq():
    """A MoVQ (VQ) autoencoder of scale factor 2."""
    torch.manual_seed(3)
    return diffusers.VQModel(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=2,
        num_vq_embeddings=8, vq_embed_dim=4,
    ).eval()


def _kandinsky3(cls_name):
    torch.manual_seed(0)
    unet = diffusers.Kandinsky3UNet(
        in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=2,
        block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=16,
    ).eval()
    pipe = getattr(diffusers, cls_name)(tokenizer=None, text_encoder=None, unet=unet,
                                        scheduler=make_scheduler("ddpm"), movq=_movq())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _kandinsky3_run(**inputs):
    def run(pipe, steps=3, seed=0, **extra):
        mask = torch.ones(1, 8, dtype=torch.long)
        out = pipe(prompt_embeds=_randn(1, 8, 16, seed=8), negative_prompt_embeds=_randn(1, 8, 16, seed=9),
                   attention_mask=mask, negative_attention_mask=mask, **inputs, output_type="latent",
                   num_inference_steps=steps, generator=_generator(seed), **extra)
        return torch.as_tensor(out[0])
    return run


CASES["Kandinsky3Pipeline"] = Case(lambda: _kandinsky3("Kandinsky3Pipeline"), _kandinsky3_run(height=32, width=32))
CASES["Kandinsky3Img2ImgPipeline"] = Case(lambda: _kandinsky3("Kandinsky3Img2ImgPipeline"),
                                          _kandinsky3_run(image=IMAGE, strength=0.75))


# -- Stable Audio: a DiT on [B, C, length] latents, EDM DPM-Solver; the uncond half is zeros without a negative ----
def _stable_audio():
    torch.manual_seed(0)
    transformer = diffusers.StableAudioDiTModel(
        sample_size=8, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=8, time_proj_dim=8,
        global_states_input_dim=16, cross_attention_input_dim=8,
    ).eval()
    torch.manual_seed(1)
    projection = diffusers.StableAudioProjectionModel(text_encoder_dim=8, conditioning_dim=8, min_value=0,
                                                      max_value=32)
    torch.manual_seed(3)
    vae = diffusers.AutoencoderOobleck(encoder_hidden_size=4, downsampling_ratios=[1, 2], channel_multiples=[1, 2],
                                       decoder_channels=4, decoder_input_channels=4, audio_channels=2,
                                       sampling_rate=4).eval()
    pipe = diffusers.StableAudioPipeline(
        vae=vae, text_encoder=None, projection_model=projection, tokenizer=None, transformer=transformer,
        scheduler=diffusers.EDMDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction",
                                                           sigma_data=1.0, sigma_schedule="exponential"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stable_audio_run(pipe, steps=3, seed=0, **extra):
    out = pipe(prompt_embeds=_randn(1, 6, 8, seed=8), negative_prompt_embeds=_randn(1, 6, 8, seed=9),
               output_type="latent", num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["StableAudioPipeline"] = Case(_stable_audio, _stable_audio_run)


# -- Cosmos 2.5 Predict, text-to-world: Wan VAE (tiny_video), a tiny Cosmos DiT, a stand-in safety checker --------
class _NoGuardrail:
    """Stands in for cosmos_guardrail's checker (not installed): the pipeline refuses to run without one."""

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, video):
        return video


def _cosmos2_5_predict():
    from tiny_video import _wan_vae

    torch.manual_seed(0)
    transformer = diffusers.CosmosTransformer3DModel(
        in_channels=16 + 1, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        mlp_ratio=2, text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 16, 16), patch_size=(1, 2, 2),
        rope_scale=(1.0, 1.0, 1.0), concat_padding_mask=True, extra_pos_embed_type=None,
    ).eval()
    pipe = diffusers.Cosmos2_5_PredictBasePipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=_wan_vae(),
        scheduler=diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                    flow_shift=3.0),
        safety_checker=_NoGuardrail())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cosmos2_5_run(pipe, steps=3, seed=0, **extra):
    out = pipe(prompt_embeds=_randn(1, 6, 16, seed=8), negative_prompt_embeds=_randn(1, 6, 16, seed=9), height=32,
               width=32, num_frames=1, output_type="latent", num_inference_steps=steps, generator=_generator(seed),
               **extra)
    return torch.as_tensor(out[0])


CASES["Cosmos2_5_PredictBasePipeline"] = Case(_cosmos2_5_predict, _cosmos2_5_run)


# -- Kandinsky 2.2 decoders: a UNet on image embeddings (+ a hint: ControlNet) with learned-variance channels ---------
def _kandinsky22(cls_name, in_channels=4, hint=False):
    """DDPM with a fixed variance: the pipeline steps the noise channels (tests/test_learned_variance.py: learned).
    in_channels: latents + mask + masked image (inpainting: 9); latents + the hint's embedding (ControlNet: 8)."""
    unet = _sd_unet(in_channels=8 if hint else in_channels, out_channels=8,
                    addition_embed_type="image_hint" if hint else "image", encoder_hid_dim=16,
                    encoder_hid_dim_type="image_proj", cross_attention_dim=32)
    pipe = getattr(diffusers, cls_name)(unet=unet, scheduler=make_scheduler("ddpm"), movq=_movq())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _kandinsky22_run(output_type="latent", **inputs):
    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(image_embeds=_randn(1, 16, seed=8), negative_image_embeds=_randn(1, 16, seed=9), height=32,
                   width=32, **inputs, output_type=output_type, num_inference_steps=steps, generator=_generator(seed),
                   **extra)
        return torch.as_tensor(out[0])
    return run


HINT = _randn(1, 3, 128, 128, seed=10).clamp(0, 1)  # the UNet's hint embedding downsamples 8x to the 16x16 latents
CASES["KandinskyV22Pipeline"] = Case(lambda: _kandinsky22("KandinskyV22Pipeline"), _kandinsky22_run())
CASES["KandinskyV22Img2ImgPipeline"] = Case(lambda: _kandinsky22("KandinskyV22Img2ImgPipeline"),
                                            _kandinsky22_run(image=IMAGE, strength=0.75))
CASES["KandinskyV22InpaintPipeline"] = Case(lambda: _kandinsky22("KandinskyV22InpaintPipeline", in_channels=9),
                                            _kandinsky22_run(image=IMAGE, mask_image=MASK.contiguous()))  # written to
CASES["KandinskyV22ControlnetPipeline"] = Case(lambda: _kandinsky22("KandinskyV22ControlnetPipeline", hint=True),
                                               _kandinsky22_run("pt", hint=HINT))  # no latent output
CASES["KandinskyV22ControlnetImg2ImgPipeline"] = Case(
    lambda: _kandinsky22("KandinskyV22ControlnetImg2ImgPipeline", hint=True),
    _kandinsky22_run("pt", hint=HINT, image=IMAGE, strength=0.75))


# -- PRX: a flow DiT on latents (no VAE: latent output), embeddings and masks given -------------------------------
def _prx():
    torch.manual_seed(0)
    transformer = diffusers.PRXTransformer2DModel(
        in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=1,
        axes_dim=[8, 8],
    ).eval()
    _unzero(transformer)
    pipe = diffusers.PRXPipeline(transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                 text_encoder=None, tokenizer=None, vae=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _prx_run(pipe, steps=3, seed=0, size=64, **extra):
    mask = torch.ones(1, 6, dtype=torch.bool)
    out = pipe(prompt_embeds=_randn(1, 6, 16, seed=8), negative_prompt_embeds=_randn(1, 6, 16, seed=9),
               prompt_attention_mask=mask, negative_prompt_attention_mask=mask, height=size, width=size,
               use_resolution_binning=False, output_type="latent", num_inference_steps=steps,
               generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["PRXPipeline"] = Case(_prx, _prx_run)


# -- AudioLDM 2: a UNet with two cross-attentions (GPT-2's generated embeds, T5's); embeddings given; the vocoder
# sizes the mel spectrogram (latent output); T5 and GPT-2 are only read for their kind and dtype ---------------
def _audioldm2():
    from tiny_pipelines import _sd_vae, _t5
    from transformers import GPT2Config, GPT2Model, SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    unet = diffusers.AudioLDM2UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(16, 16),
    ).eval()
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=16, upsample_initial_channel=8, upsample_rates=[2], upsample_kernel_sizes=[4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])).eval()
    pipe = diffusers.AudioLDM2Pipeline(
        vae=_sd_vae(), text_encoder=None, text_encoder_2=_t5(), projection_model=None,
        language_model=GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=16, n_positions=16,
                                            bos_token_id=0, eos_token_id=0)).eval(),
        tokenizer=None, tokenizer_2=None, feature_extractor=None, unet=unet, scheduler=make_scheduler("ddim"),
        vocoder=vocoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _audioldm2_run(pipe, steps=3, seed=0, **extra):
    mask = torch.ones(1, 6, dtype=torch.long)
    out = pipe(prompt_embeds=_randn(1, 6, 16, seed=8), negative_prompt_embeds=_randn(1, 6, 16, seed=9),
               generated_prompt_embeds=_randn(1, 5, 16, seed=10),
               negative_generated_prompt_embeds=_randn(1, 5, 16, seed=11),
               attention_mask=mask, negative_attention_mask=mask, audio_length_in_s=2.0, output_type="latent",
               num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["AudioLDM2Pipeline"] = Case(_audioldm2, _audioldm2_run)


# -- Kandinsky 2.1 decoders: a prompt is required (byte-level tokenizer, a tiny M-CLIP) besides the image embeds --
def _kandinsky21(cls_name, in_channels=4):
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
    from tiny_pipelines import clip_tokenizer

    tokenizer = clip_tokenizer(max_length=77)
    torch.manual_seed(1)
    text_encoder = MultilingualCLIP(MCLIPConfig(
        transformerDimSize=32, imageDimSize=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=1)).eval()
    unet = _sd_unet(in_channels=in_channels, out_channels=8, addition_embed_type="text_image", encoder_hid_dim=32,
                    encoder_hid_dim_type="text_image_proj", cross_attention_dim=32)
    pipe = getattr(diffusers, cls_name)(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                        scheduler=make_scheduler("ddim"), movq=_movq())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _kandinsky21_run(**inputs):
    def run(pipe, steps=3, seed=0, **extra):
        out = pipe(prompt="a red cat", negative_prompt="a blue car", image_embeds=_randn(1, 32, seed=8),
                   negative_image_embeds=_randn(1, 32, seed=9), height=32, width=32, **inputs, output_type="pt",
                   num_inference_steps=steps, generator=_generator(seed), **extra)
        return torch.as_tensor(out[0])
    return run


CASES["KandinskyPipeline"] = Case(lambda: _kandinsky21("KandinskyPipeline"), _kandinsky21_run())
CASES["KandinskyImg2ImgPipeline"] = Case(lambda: _kandinsky21("KandinskyImg2ImgPipeline"),
                                         _kandinsky21_run(image=IMAGE, strength=0.75))
CASES["KandinskyInpaintPipeline"] = Case(lambda: _kandinsky21("KandinskyInpaintPipeline", in_channels=9),
                                         _kandinsky21_run(image=IMAGE, mask_image=MASK.contiguous()))


# -- Stable Audio 3: a tiny DiT; the SAME autoencoder only sizes the latents (latent output): a stand-in -------------
class _LatentSizes:
    """Stands in for AutoencoderSAME where only its sizes are read: 2 samples per latent frame, 4 latent channels."""

    def __init__(self):
        from types import SimpleNamespace

        self.config, self.downsampling_ratio = SimpleNamespace(sampling_rate=8, latent_dim=4), 2

    def to(self, *args, **kwargs):
        return self


def _stable_audio3():
    torch.manual_seed(0)
    transformer = diffusers.StableAudio3DiTModel(
        io_channels=4, patch_size=1, embed_dim=16, depth=1, num_heads=2, cond_token_dim=16, global_cond_dim=16,
        local_add_cond_dim=4, timestep_features_dim=8, ff_mult=2.0, num_memory_tokens=2,
    ).eval()
    duration = diffusers.pipelines.stable_audio_3.modeling_stable_audio_3.StableAudio3DurationEmbedder(
        output_dim=16, fourier_dim=8)
    pipe = diffusers.StableAudio3Pipeline(vae=_LatentSizes(), text_encoder=None, tokenizer=None,
                                          duration_embedder=duration, transformer=_unzero(transformer),
                                          scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stable_audio3_run(pipe, steps=3, seed=0, **extra):
    mask = torch.ones(1, 6, dtype=torch.long)
    out = pipe(prompt_embeds=_randn(1, 6, 16, seed=8), negative_prompt_embeds=_randn(1, 6, 16, seed=9),
               encoder_attention_mask=mask, negative_encoder_attention_mask=mask, duration=2.0, output_type="latent",
               num_inference_steps=steps, generator=_generator(seed), **extra)
    return torch.as_tensor(out[0])


CASES["StableAudio3Pipeline"] = Case(_stable_audio3, _stable_audio3_run)
