"""Tiny cases of the Qwen-Image family and its kin (LongCat, Ovis, GLM, Ernie, ...): issue 17, family qwen."""

from __future__ import annotations

import contextlib
import importlib
import types
import unittest.mock

import torch
from tiny_image import TEXT_LEN, _embeds, _image, _qwen_call, _qwen_parts
from tiny_pipelines import _flow_vae, _no_bar, make_scheduler
from tiny_registry import Case

import diffusers

STRENGTH = 0.75  # img2img / inpaint: steps * 4 // 3 scheduled, 3 of them run


def _qwen_build(cls, **more):
    """build() of a Qwen-Image class: _qwen_parts plus `more` (name -> a function making that part)."""
    return lambda: _no_bar(getattr(diffusers, cls)(**_qwen_parts(), **{name: make() for name, make in more.items()}))


_NONE = lambda: None  # noqa: E731 (a part left out: the calls pass embeddings)


def _qwen_controlnet(extra_condition_channels=0):
    """A ControlNet matching _qwen_parts' transformer; its zero-initialised projections made random so that the
    residuals it adds are not zero."""
    torch.manual_seed(1)
    controlnet = diffusers.QwenImageControlNetModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4), extra_condition_channels=extra_condition_channels,
    ).eval()
    for module in (controlnet.controlnet_x_embedder, *controlnet.controlnet_blocks):
        torch.nn.init.normal_(module.weight, std=0.1)
    return controlnet


def _mask(size=32):
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0  # repaint the middle
    return mask


def _small_images(module, side=32):
    """Edit pipelines resize input images to a fixed area (~1024² px) whatever the call asks; keep them at
    side x side here (`module`: the pipeline's module under diffusers.pipelines)."""
    module = importlib.import_module(f"diffusers.pipelines.{module}")
    original = module.calculate_dimensions
    small = lambda area, ratio: original(side * side, ratio)  # noqa: E731
    return unittest.mock.patch.object(module, "calculate_dimensions", small)


def _run(call, steps_of=lambda steps: steps, module=None, global_seed=False, side=32):
    """run(pipe, steps, seed, **extra) for a pipeline called with `call()`'s arguments, latents out; `module`,
    `side`: where to patch calculate_dimensions, and the image side (see _small_images); `global_seed`: the
    pipeline draws from torch's global generator too (a VAE sample without the call's generator), seeded here."""

    def run(pipe, steps=3, seed=0, **extra):
        kwargs = {"output_type": "latent", **call(), **extra}
        if global_seed:
            torch.manual_seed(seed)
        with _small_images(module, side) if module else contextlib.nullcontext():
            out = pipe(**kwargs, num_inference_steps=steps_of(steps), generator=torch.Generator().manual_seed(seed))
        return out[0]

    return run


def _strength(steps):
    return steps * 4 // 3


_QWEN_SIZE = dict(height=32, width=32)


class _Qwen3VLProcessor:
    """What QwenImage21Pipeline's constructor reads of its processor (the system prompt's length, the image-pad
    token); the calls pass embeddings, so nothing else is used."""

    tokenizer = types.SimpleNamespace(encode=lambda text: [7])

    def apply_chat_template(self, messages, **kwargs):
        return [[0] * 5]


def _qwen21_build(vae=_NONE):
    """Qwen-Image 2.1: unpatched latents, 16 px per token: 64x64 images are 16 tokens of 4 channels."""
    vae = vae()
    torch.manual_seed(0)
    transformer = diffusers.QwenImage21Transformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        context_in_dim=16, axes_dims_rope=(8, 4, 4),
    ).eval()
    return _no_bar(diffusers.QwenImage21Pipeline(scheduler=make_scheduler("flow_euler"), vae=vae, text_encoder=None,
                                                 processor=_Qwen3VLProcessor(), transformer=transformer))


class _LongCatTextProcessor:
    """What LongCatImageEditPipeline's constructor reads of its Qwen2-VL processor; the calls pass embeddings."""

    image_processor = None


def _longcat_build(cls, vae=_NONE, text_processor=_NONE):
    def build():
        torch.manual_seed(0)
        transformer = diffusers.LongCatImageTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[4, 4, 8],
        ).eval()  # 64 = the 16 latent channels the pipelines fix, packed 2x2
        return _no_bar(getattr(diffusers, cls)(scheduler=make_scheduler("flow_euler"), vae=vae(), text_encoder=None,
                                               tokenizer=None, text_processor=text_processor(),
                                               transformer=transformer))

    return build


def _longcat_run(call, module=None, side=32):
    """LongCat-Image's encode_prompt takes len(prompt) even when given embeddings (Diffusers 0.42: prompt=None
    fails), and check_inputs refuses both: the prompt reaches it as [""] here. Its prompt rewrite needs the text
    encoder: off."""
    inner = _run(lambda: {**call(), "prompt_embeds": _embeds(1, TEXT_LEN, 16, seed=10),
                          "negative_prompt_embeds": _embeds(1, TEXT_LEN, 16, seed=11)}, module=module,
                 side=side)

    def run(pipe, steps=3, seed=0, **extra):
        encode = pipe.encode_prompt
        with unittest.mock.patch.object(pipe, "encode_prompt", lambda prompt=None, **kwargs: encode(
                prompt=[""] if prompt is None else prompt, **kwargs)):
            return inner(pipe, steps, seed, **extra)

    return run


def _ovis_build():
    torch.manual_seed(0)
    transformer = diffusers.OvisImageTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 4, 8),
    ).eval()
    return _no_bar(diffusers.OvisImagePipeline(scheduler=make_scheduler("flow_euler"), vae=_flow_vae(4),
                                               text_encoder=None, tokenizer=None, transformer=transformer))


def _glm_build():
    """GLM-Image's diffusion decoder alone: the call passes the prior tokens its vision-language model would
    generate (one per 2x2 latent patch: 32x32 images are 4), and the glyph embeddings."""
    torch.manual_seed(0)
    transformer = diffusers.GlmImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=32,
    ).eval()
    return _no_bar(diffusers.GlmImagePipeline(
        tokenizer=None, processor=None, text_encoder=None, vision_language_encoder=None, vae=None,
        transformer=transformer, scheduler=make_scheduler("flow_euler")))


def _glm_call():
    prior = torch.randint(0, 32, (1, 4), generator=torch.Generator().manual_seed(12))
    return dict(prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=10),
                negative_prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=11), prior_token_ids=prior, height=32, width=32)


def _ernie_build():
    """ERNIE-Image: channel-first latents [B, 4, 4, 4] (64x64 images, a VAE factor of 16 without a VAE)."""
    torch.manual_seed(0)
    transformer = diffusers.ErnieImageTransformer2DModel(
        hidden_size=32, num_attention_heads=2, num_layers=1, ffn_hidden_size=32, in_channels=4, out_channels=4,
        text_in_dim=16, rope_axes_dim=(4, 6, 6),
    ).eval()
    for layer in (transformer.adaLN_modulation[-1], transformer.final_linear):  # zero-initialised: a zero output
        torch.nn.init.normal_(layer.weight, std=0.2)
        torch.nn.init.normal_(layer.bias, std=0.2)
    return _no_bar(diffusers.ErnieImagePipeline(transformer=transformer, vae=None, text_encoder=None, tokenizer=None,
                                                scheduler=make_scheduler("flow_euler")))


def _ernie_call():
    # one [tokens, C] tensor per prompt; the negative one shorter, so the joint batch pads it
    return dict(prompt_embeds=[_embeds(TEXT_LEN, 16, seed=10)], negative_prompt_embeds=[_embeds(5, 16, seed=11)],
                height=64, width=64, use_pe=False)


def _nucleus_build():
    """Nucleus-MoE-Image: Qwen-Image's packed latents and VAE; its one layer is dense (as its first three are)."""
    parts = _qwen_parts()
    torch.manual_seed(0)
    transformer = diffusers.NucleusMoEImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4), num_experts=4, moe_intermediate_dim=16,
    ).eval()
    return _no_bar(diffusers.NucleusMoEImagePipeline(transformer=transformer, scheduler=parts["scheduler"],
                                                     vae=parts["vae"], text_encoder=None, processor=None))


def _joy_build(cls, transformer_cls="JoyImageEditTransformer3DModel"):
    def build():
        torch.manual_seed(0)
        transformer = getattr(diffusers, transformer_cls)(
            patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=1,
            rope_dim_list=[4, 6, 6],
        ).eval()
        return _no_bar(getattr(diffusers, cls)(scheduler=make_scheduler("flow_euler"), vae=None, text_encoder=None,
                                               tokenizer=None, transformer=transformer, processor=None))

    return build


def _joy_run(call):
    """JoyImage resizes every request to a ~1024² px bucket; the call's own size is kept here."""
    inner = _run(call)

    def run(pipe, steps=3, seed=0, **extra):
        with unittest.mock.patch.object(pipe.vae_image_processor, "get_default_height_width",
                                        lambda image, height, width: (height, width)):
            return inner(pipe, steps, seed, **extra)

    return run


def _joy_plus_run():
    """JoyImageEditPlusPipeline formats its prompt even when given embeddings (Diffusers 0.42: prompt=None fails),
    and check_inputs refuses both: a prompt is passed, and check_inputs sees none."""
    inner = _run(lambda: {**_qwen_call(), "prompt": "a photo", "height": 32, "width": 32})

    def run(pipe, steps=3, seed=0, **extra):
        check = pipe.check_inputs
        with unittest.mock.patch.object(pipe, "check_inputs", lambda prompt, *args, **kwargs: check(
                None, *args, **kwargs)):
            return inner(pipe, steps, seed, **extra)

    return run


def _qwen21_vae():
    """16x down (four 2x stages), RGBA in: a 64x64 condition image is 4x4 latent tokens."""
    torch.manual_seed(3)
    return diffusers.AutoencoderKLQwenImage21(
        base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False] * 4, latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()


def _qwen21_image_run():
    """Qwen-Image 2.1 with a condition image, whose tokens it prepends to the noise. Its text encoder would embed
    the prompt with one image-pad slot per 2x2 image tokens (4 here); encode_prompt is replaced by that layout:
    the call's embeddings with 4 slots after the first 2 tokens."""
    slots = 4
    inner = _run(lambda: {**_qwen_call(), "image": _image(64), "output_resolution": 64})

    def encode(prompt=None, image=None, device=None, num_images_per_prompt=1, prompt_embeds=None,
               prompt_embeds_mask=None, image_pad_mask=None):
        def with_slots(x, fill):
            return torch.cat([x[:, :2], x.new_full((x.shape[0], slots, *x.shape[2:]), fill), x[:, 2:]], dim=1)

        pad = torch.zeros(prompt_embeds.shape[:2], dtype=torch.bool)
        return with_slots(prompt_embeds, 0), with_slots(prompt_embeds_mask, 1), with_slots(pad, True)

    def run(pipe, steps=3, seed=0, **extra):
        with unittest.mock.patch.object(pipe, "encode_prompt", encode):
            return inner(pipe, steps, seed, **extra)

    return run


def _layered_build():
    parts = _qwen_parts()
    torch.manual_seed(0)
    parts["transformer"] = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4), use_additional_t_cond=True,
        use_layer3d_rope=True,
    ).eval()
    return _no_bar(diffusers.QwenImageLayeredPipeline(**parts, processor=None))


def _layered_run(**more):
    """QwenImageLayeredPipeline decomposes `image` into 2 layers. It casts the image to its text encoder's dtype
    (a stand-in here: the call passes embeddings, and a prompt so that it captions nothing), and its
    output_type="latent" path fails (Diffusers 0.42: `images` unset), so the latents are read at each step's end."""

    def run(pipe, steps=3, seed=0, **extra):
        latents = []

        def keep(pipe, i, t, tensors):
            latents.append(tensors["latents"])
            return {}

        kwargs = {**_qwen_call(), "image": _image(32), "prompt": "a photo", "layers": 2, "output_type": "pt",
                  "callback_on_step_end": keep, **more, **extra}
        with _small_images("qwenimage.pipeline_qwenimage_layered"), unittest.mock.patch.object(
                pipe, "text_encoder", types.SimpleNamespace(dtype=torch.float32)):
            pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
        return latents[-1]

    return run


CASES: dict[str, Case] = {
    "QwenImageImg2ImgPipeline": Case(_qwen_build("QwenImageImg2ImgPipeline"), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": _image(32), "strength": STRENGTH}, _strength)),
    "QwenImageInpaintPipeline": Case(_qwen_build("QwenImageInpaintPipeline"), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": _image(32), "mask_image": _mask(), "strength": STRENGTH},
        _strength)),
    "QwenImageEditPlusPipeline": Case(_qwen_build("QwenImageEditPlusPipeline", processor=_NONE), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": [_image(32), _image(32)]},
        module="qwenimage.pipeline_qwenimage_edit_plus")),
    "QwenImageEditInpaintPipeline": Case(_qwen_build("QwenImageEditInpaintPipeline", processor=_NONE), _run(
        lambda: {**_qwen_call(), **_QWEN_SIZE, "image": _image(32), "mask_image": _mask(), "strength": STRENGTH},
        _strength, module="qwenimage.pipeline_qwenimage_edit_inpaint")),
    "QwenImageControlNetPipeline": Case(_qwen_build("QwenImageControlNetPipeline", controlnet=_qwen_controlnet),
                                        _run(lambda: {**_qwen_call(), **_QWEN_SIZE, "control_image": _image(32)})),
    "QwenImageControlNetInpaintPipeline": Case(
        _qwen_build("QwenImageControlNetInpaintPipeline", controlnet=lambda: _qwen_controlnet(4)),
        _run(lambda: {**_qwen_call(), **_QWEN_SIZE, "control_image": _image(32), "control_mask": _mask()},
             global_seed=True)),
    "QwenImageLayeredPipeline": Case(_layered_build, _layered_run()),
    "QwenImageLayeredPipeline/cfg_normalize": Case(_layered_build, _layered_run(cfg_normalize=True)),
    "QwenImage21Pipeline": Case(_qwen21_build, _run(lambda: {**_qwen_call(), "height": 64, "width": 64})),
    "LongCatImagePipeline": Case(_longcat_build("LongCatImagePipeline"), _longcat_run(
        lambda: {"height": 32, "width": 32, "enable_prompt_rewrite": False})),
    "LongCatImagePipeline/cfg_renorm_min": Case(_longcat_build("LongCatImagePipeline"), _longcat_run(
        lambda: {"height": 32, "width": 32, "enable_prompt_rewrite": False, "cfg_renorm_min": 0.9})),
    "LongCatImageEditPipeline": Case(
        _longcat_build("LongCatImageEditPipeline", lambda: _flow_vae(16), _LongCatTextProcessor),
        _longcat_run(lambda: {"image": _image(16)}, module="longcat_image.pipeline_longcat_image_edit", side=16)),
    "OvisImagePipeline": Case(_ovis_build, _run(lambda: dict(
        prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=10), negative_prompt_embeds=_embeds(1, TEXT_LEN, 16, seed=11),
        negative_prompt=None, height=16, width=16))),  # its default negative_prompt "" clashes with the embeds
    "GlmImagePipeline": Case(_glm_build, _run(_glm_call)),
    "ErnieImagePipeline": Case(_ernie_build, _run(_ernie_call)),
    "NucleusMoEImagePipeline": Case(_nucleus_build, _run(lambda: {**_qwen_call(), **_QWEN_SIZE})),
    "JoyImageEditPipeline": Case(_joy_build("JoyImageEditPipeline"), _joy_run(lambda: {**_qwen_call(), **_QWEN_SIZE})),
    "JoyImageEditPlusPipeline": Case(
        _joy_build("JoyImageEditPlusPipeline", "JoyImageEditPlusTransformer3DModel"), _joy_plus_run()),
    "QwenImage21Pipeline/image": Case(lambda: _qwen21_build(_qwen21_vae), _qwen21_image_run()),
}
