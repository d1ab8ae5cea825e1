"""Resumable, distributed image generation: one PNG per global index, seeded by that index.

Image i uses seed `seed + i` and condition `conditions[i % len(conditions)]`; indices are cut into
fixed blocks of `batch_size` and block k goes to process k mod P, so the same images (bit for bit, the
batches being the same) come out whatever the number of `accelerate launch` processes. A finished image
is a complete PNG (temp file + rename); a rerun of the same command generates only the missing ones.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..errors import InputError, InputTypeError
from ..guidance import Guidance
from ..setting import Setting
from .files import RUN_FILE, TMP_PREFIX, image_name, process_state, read_json, save_png, versions, write_json

__all__ = ["load_pipeline", "generate", "image_name", "read_image_metadata", "RUN_FILE"]

# Fields of run.json that define the image set: a resume must agree on all of them.
_IDENTITY = ("model", "pipeline", "scheduler", "num_inference_steps", "guidance", "seed", "conditioning", "call")


def apply_guidance(pipe, guidance: Guidance):
    """Context manager: `pipe` guided by `guidance` inside the block, restored after (apg.guide)."""
    from .. import guide

    return guide(pipe, guidance)


def load_pipeline(model: str, device=None, dtype=None):
    """The shared loader (apg.runtime), with progress bars off: generation draws its own."""
    from ..runtime import load_pipeline as load

    pipe = load(model, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scheduler_info(pipe) -> dict:
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        return {"class": None}
    config = {k: v for k, v in dict(getattr(scheduler, "config", {})).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": json.loads(json.dumps(config, default=str))}


def _check_or_write_run(out_dir: Path, run: dict, is_main: bool):
    run_file = out_dir / RUN_FILE
    if run_file.is_file():
        existing = read_json(run_file)
        differing = [k for k in _IDENTITY if existing.get(k) != run.get(k)]
        if differing:
            raise InputError(
                f"{out_dir} holds a different run ({', '.join(differing)} differ from this command's); resume with "
                f"the same settings or choose another output folder"
            )
        if run["num_images"] > existing["num_images"] and is_main:  # extending a run keeps images 0..n-1
            write_json(run_file, run)
    elif is_main:
        write_json(run_file, run)


def generate(pipe, guidance: Guidance | Setting, out_dir, *, num_images: int, classes=None, prompts=None, seed: int = 0,
             batch_size: int = 16, num_inference_steps: int = 32, model: str = "unknown", call_kwargs=None,
             progress: bool = True) -> dict:
    """Generate images 0..num_images-1 into out_dir as PNGs (skipping those already there); returns a summary.

    The summary's `missing` counts the images absent at the start (all processes), `generated` this process's.

    Exactly one of `classes` (names or label ids, for class-conditional pipelines) or `prompts`.
    """
    from tqdm.auto import tqdm

    if isinstance(guidance, Setting):
        guidance = guidance.build()
    if not isinstance(guidance, Guidance):
        raise InputTypeError(f"guidance must be an apg.Guidance or apg.Setting, got {type(guidance).__name__}")
    for name, value in (("num_images", num_images), ("batch_size", batch_size),
                        ("num_inference_steps", num_inference_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an int >= 0, got {seed!r}")
    if (classes is None) == (prompts is None):
        raise InputError("give exactly one of classes (class-conditional models) or prompts (text-to-image)")
    key, conditions = ("class_labels", list(classes)) if classes is not None else ("prompt", list(prompts))
    if not conditions:
        raise InputError(f"{'classes' if key == 'class_labels' else 'prompts'} is empty")
    # Class names are recorded as given and passed to the pipeline as ids (DiT takes ids only).
    labels = [pipe.get_label_ids([c])[0] if key == "class_labels" and isinstance(c, str) else c for c in conditions]

    state = process_state()
    out_dir = Path(out_dir)
    call_kwargs = dict(call_kwargs or {})
    run = {
        "model": model, "pipeline": type(pipe).__name__, "scheduler": _scheduler_info(pipe),
        "num_inference_steps": num_inference_steps, "guidance": guidance.to_dict(), "seed": seed,
        "seed_rule": "image i uses torch.Generator('cpu').manual_seed(seed + i)",
        "conditioning": {key: conditions, "rule": "image i uses entry i mod len"},
        "call": json.loads(json.dumps(call_kwargs, default=str)), "num_images": num_images,
        "versions": versions(),
    }
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f"{TMP_PREFIX}*"):  # partial writes of a killed run; no writer is running yet
            stale.unlink()
    state.wait_for_everyone()
    _check_or_write_run(out_dir, run, state.is_main_process)
    state.wait_for_everyone()

    missing = {i for i in range(num_images) if not (out_dir / image_name(i, num_images)).exists()}
    blocks = [range(start, min(start + batch_size, num_images)) for start in range(0, num_images, batch_size)]
    todo = [[i for i in block if i in missing] for block in blocks[state.process_index::state.num_processes]]
    todo = [block for block in todo if block]
    total = sum(len(block) for block in todo)
    label = "class" if key == "class_labels" else "prompt"
    per_image = {"model": model, "num_inference_steps": num_inference_steps, "guidance": guidance.to_dict(),
                 "scheduler": run["scheduler"]["class"]}
    bar = tqdm(total=total, desc=f"generate [{state.process_index}]", unit="img",
               disable=not (progress and state.is_main_process))
    start = time.perf_counter()
    with apply_guidance(pipe, guidance) as guided:
        for indices in todo:
            batch_conditions = [conditions[i % len(conditions)] for i in indices]
            generators = [torch.Generator("cpu").manual_seed(seed + i) for i in indices]
            inputs = [labels[i % len(labels)] for i in indices]
            images = guided(**{key: inputs}, num_inference_steps=num_inference_steps, generator=generators,
                            output_type="pil", **call_kwargs).images
            for i, condition, image in zip(indices, batch_conditions, images):
                meta = {"index": i, "seed": seed + i, label: condition, **per_image}
                save_png(out_dir / image_name(i, num_images), image, {"apg": json.dumps(meta, sort_keys=True)})
            bar.update(len(indices))
    bar.close()
    seconds = time.perf_counter() - start
    summary = {"out_dir": str(out_dir), "process": state.process_index, "processes": state.num_processes,
               "num_images": num_images, "missing": len(missing), "generated": total, "seconds": round(seconds, 3),
               "images_per_s": round(total / seconds, 3) if total else None}
    if progress and total:
        print(f"generate [{state.process_index}/{state.num_processes}]: {total} images in {seconds:.1f} s, "
              f"{total / seconds:.2f} images/s", file=sys.stderr)
    state.wait_for_everyone()
    return summary


def read_image_metadata(path) -> dict:
    """The per-image record generate() stores in the PNG's 'apg' text chunk."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get("apg") if hasattr(image, "text") else None
    if text is None:
        raise InputError(f"{path} carries no 'apg' metadata (not written by apg-eval generate)")
    return json.loads(text)


