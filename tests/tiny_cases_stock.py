"""Tiny cases for the classes apg guided before the census (tests/tiny_pipelines.py, tiny_image.py, tiny_video.py,
tiny_control.py build them; this module only names them for tests/tiny_registry.py)."""

from __future__ import annotations

import tiny_control
import tiny_image
import tiny_pipelines
import tiny_video
from tiny_registry import Case


def _cases(families, call):
    """family -> Case of that family's builder and call (every family table has the builder first)."""
    def case(family):
        return Case(families[family][0],
                    lambda pipe, steps=3, seed=0, **extra: call(pipe, family, steps, seed, **extra))
    return case


_pipelines = _cases(tiny_pipelines.FAMILIES, tiny_pipelines.call)  # DiT: decoded images (np), as a tensor
_image = _cases(tiny_image.IMAGE_FAMILIES, tiny_image.call_image)
_control = _cases(tiny_control.FAMILIES, tiny_control.call)
_video = _cases(tiny_video.VIDEO_FAMILIES, tiny_video.video_call)

CASES: dict[str, Case] = {
    "StableDiffusionPipeline": _pipelines("sd"),
    "StableDiffusionImg2ImgPipeline": _pipelines("sd_img2img"),
    "StableDiffusionXLPipeline": _pipelines("sdxl"),
    "StableDiffusionXLImg2ImgPipeline": _pipelines("sdxl_img2img"),
    "StableDiffusion3Pipeline": _pipelines("sd3"),
    "PixArtSigmaPipeline": _pipelines("pixart_sigma"),
    "SanaPipeline": _pipelines("sana"),
    "DiTPipeline": _pipelines("dit"),
    "FluxPipeline": _pipelines("flux"),
    "WanPipeline": _video("wan"),
    "WanPipeline/2.2": _video("wan22"),  # Wan 2.2: transformer_2 below the boundary, its own guidance_scale_2
    "WanImageToVideoPipeline": _video("wan_i2v"),
    "LTXPipeline": _video("ltx"),
    "LTXImageToVideoPipeline": _video("ltx_i2v"),
    "CogVideoXPipeline": _video("cogvideox"),
    "HunyuanVideoPipeline": _video("hunyuan_video"),
    "FluxImg2ImgPipeline": _image("flux_img2img"),
    "FluxKontextPipeline": _image("flux_kontext"),
    "ChromaPipeline": _image("chroma"),
    "QwenImagePipeline": _image("qwen"),
    "QwenImageEditPipeline": _image("qwen_edit"),
    "HiDreamImagePipeline": _image("hidream"),
    "Lumina2Pipeline": _image("lumina2"),
    "StableDiffusionControlNetPipeline": _control("sd_controlnet"),
    "StableDiffusionXLControlNetPipeline": _control("sdxl_controlnet"),
    "StableDiffusionInpaintPipeline": _control("sd_inpaint"),
    "StableDiffusionInpaintPipeline/4ch": _control("sd_inpaint_4ch"),  # a 4-channel unet: known region blended back
    "StableDiffusionXLInpaintPipeline": _control("sdxl_inpaint"),
    "PixArtAlphaPipeline": _control("pixart_alpha"),
    "StableDiffusion3Img2ImgPipeline": _control("sd3_img2img"),
    "KolorsPipeline": _control("kolors"),
    "AuraFlowPipeline": _control("auraflow"),
    "HunyuanDiTPipeline": _control("hunyuandit"),
    "CogView4Pipeline": _control("cogview4"),
    "Kandinsky5T2VPipeline": _control("kandinsky5_t2v"),
    "ZImagePipeline": _control("z_image"),
}
