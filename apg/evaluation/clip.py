"""CLIP score for text-to-image runs: 100 * max(cos(image, prompt), 0), averaged (Hessel et al., 2021)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, ResourceError
from .files import list_images, process_state

__all__ = ["clip_score", "DEFAULT_CLIP_MODEL"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # the usual choice (torchmetrics' default)


def _load(model: str):
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(model), CLIPProcessor.from_pretrained(model)
    except OSError as error:
        raise ResourceError(
            f"CLIP score needs the CLIP model {model!r} (weights and processor) from the Hugging Face hub or a local "
            f"folder; it could not be loaded ({error}). Offline, download it elsewhere (huggingface-cli download "
            f"{model}) and pass the folder (--clip-model PATH, Python: clip_model=PATH)."
        ) from error


def _prompts_from_metadata(files) -> list[str]:
    from PIL import Image

    prompts = []
    for path in files:
        with Image.open(path) as image:
            record = json.loads(getattr(image, "text", {}).get("apg", "{}"))
        if "prompt" not in record:
            raise InputError(f"{path} has no prompt in its 'apg' metadata; pass prompts explicitly")
        prompts.append(record["prompt"])
    return prompts


def clip_score(images, prompts=None, *, clip_model=DEFAULT_CLIP_MODEL, batch_size=32, progress=True) -> dict:
    """CLIP score of images (a folder, or a list of PIL images) against their prompts.

    For a folder written by `apg-eval generate`, prompts default to those stored in each PNG.
    Returns {"clip_score": mean, "clip_score_std": std over images, "count": N, "clip_model": name}.
    """
    from accelerate.utils import gather_object
    from PIL import Image
    from tqdm.auto import tqdm

    if isinstance(images, (str, Path)):
        files = list_images(images)
        prompts = _prompts_from_metadata(files) if prompts is None else list(prompts)
        load = lambda i: Image.open(files[i]).convert("RGB")  # noqa: E731
        count = len(files)
    else:
        images = list(images)
        load, count = (lambda i: images[i].convert("RGB")), len(images)
    if prompts is None or len(prompts) != count:
        got = None if prompts is None else len(prompts)
        raise InputError(f"prompts: need one prompt per image ({count}), got {got}")
    state = process_state()
    model, processor = _load(str(clip_model))
    model = model.to(state.device).eval()
    scores = []
    with state.split_between_processes(list(range(count))) as indices, torch.inference_mode():
        for start in tqdm(range(0, len(indices), batch_size), desc="CLIP score", unit="batch",
                          disable=not (progress and state.is_main_process)):
            batch = indices[start:start + batch_size]
            inputs = processor(text=[prompts[i] for i in batch], images=[load(i) for i in batch],
                               return_tensors="pt", padding=True, truncation=True).to(state.device)
            output = model(**inputs)  # image_embeds, text_embeds: [B, D], unit norm
            cosine = (output.image_embeds * output.text_embeds).sum(-1)
            scores.append((100.0 * cosine.clamp(min=0)).double().cpu().numpy())
    local = np.concatenate(scores) if scores else np.zeros(0)
    per_image = np.concatenate(gather_object([local])) if state.num_processes > 1 else local
    return {"clip_score": float(per_image.mean()), "clip_score_std": float(per_image.std()), "count": count,
            "clip_model": str(clip_model)}
