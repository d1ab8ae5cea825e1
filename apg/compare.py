"""`apg compare`: the same seeds under each guidance method and scale, as one labelled grid and a table.

    apg compare --classes airplane ship --scales 1 4 8 15 --seeds 0 1 --methods cfg apg mcfg --out grid.png
    apg compare --model stabilityai/sdxl-turbo --prompt "a red fox" --scales 3 7 12 --dtype float16 --out fox.png

Each cell shows its mean HSV saturation (S) and the fraction of its pixel values clipped to 0 or 255 (C):
at high scales CFG burns pixels to white, which lowers S, so S alone reads best for the worst images.
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import dataclass, field

from . import guidance as _guidance
from ._options import (
    CommandError, add_guidance_options, add_runtime_options, at_least, check_guidance_options, check_runtime_options,
    listed, output_file, seed, setting, writing,
)
from .setting import Setting, interval_text

__all__ = ["add_arguments", "run", "call_inputs", "format_table", "draw_grid"]

# Image inputs by call argument: the option that supplies it and what it is.
IMAGE_INPUTS = {"image": ("--image", "an input image"), "mask_image": ("--mask-image", "an inpainting mask"),
                "control_image": ("--control-image", "a control image")}


def add_arguments(parser) -> None:
    """The options of `apg compare`."""
    parser.add_argument("--model", default="builtin", metavar="MODEL",
                        help="'builtin' (the offline CIFAR-10 model), a Hugging Face hub id or a local pipeline "
                             "folder: any pipeline apg.guide supports")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--classes", nargs="+", type=listed(str, "a class name or id"), metavar="CLASS",
                      help="class names or ids, for class-conditional pipelines (default for builtin: cat ship)")
    what.add_argument("--prompt", nargs="+", metavar="TEXT",
                      help="one or more prompts (quote each), for text-conditioned pipelines")
    parser.add_argument("--negative-prompt", metavar="TEXT",
                        help="negative prompt for every row (text-conditioned pipelines)")
    parser.add_argument("--image", metavar="FILE",
                        help="input image file, for img2img, inpainting, editing and image-to-video pipelines")
    parser.add_argument("--mask-image", metavar="FILE",
                        help="inpainting mask file (white = repaint), for inpainting pipelines")
    parser.add_argument("--control-image", metavar="FILE",
                        help="control image file (edges, depth, pose), for ControlNet pipelines")
    parser.add_argument("--scales", nargs="+", type=listed(float, "a number"), default=[1.0, 4.0, 8.0, 15.0],
                        metavar="W", help=f"guidance scales w, space-separated; {_guidance.SCALE.help}")
    parser.add_argument("--seeds", nargs="+", type=seed, default=[0], metavar="SEED",
                        help="seeds (integers >= 0), space-separated: one image per seed and condition")
    add_guidance_options(parser, default=("cfg", "apg"))
    run = parser.add_argument_group("sampling")
    run.add_argument("--steps", type=at_least(1), default=32, help="inference steps")
    run.add_argument("--scheduler", help="scheduler class, e.g. DDIMScheduler, built from the pipeline's config "
                                         "(default: the pipeline's own)")
    run.add_argument("--height", type=at_least(1), help="image height in pixels (default: the pipeline's)")
    run.add_argument("--width", type=at_least(1), help="image width in pixels (default: the pipeline's)")
    run.add_argument("--num-frames", type=at_least(1),
                     help="frames per clip, for video pipelines (default: the pipeline's)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="a progress bar per pipeline call, on stderr (default: on)")
    add_runtime_options(parser, "cuda if available, else cpu; builtin: cpu")
    out = parser.add_argument_group("output")
    out.add_argument("--cell", type=at_least(32), default=128, help="grid cell width in pixels")
    out.add_argument("--out", default="apg-compare.png", help="grid PNG to write")


@dataclass
class Inputs:
    """What the rows are and the call arguments every column shares."""

    key: str  # "prompt" or "class_labels"
    values: list
    names: list[str]  # row labels, one per value
    kwargs: dict = field(default_factory=dict)  # shared call arguments (images, negative prompt, size)
    record: dict = field(default_factory=dict)  # the same, JSON-able, for the PNG's metadata


def check_args(args) -> list[Setting]:
    """Everything the arguments alone decide, before a model loads: the settings (one per method and scale)."""
    from .schedulers import SUPPORTED_SCHEDULERS

    check_guidance_options(args, args.methods)
    settings = [setting(args, m, w) for m in args.methods for w in args.scales]
    if args.scheduler is not None and args.scheduler not in SUPPORTED_SCHEDULERS:
        raise CommandError(f"--scheduler {args.scheduler!r} is not one of {sorted(SUPPORTED_SCHEDULERS)}")
    check_runtime_options(args)
    output_file("--out", args.out)
    for key, (option, _) in IMAGE_INPUTS.items():
        if getattr(args, key) is not None:
            _open_image(getattr(args, key), option, "RGB")  # readable now, not after the model loads
    return settings


def _class_names(pipe) -> dict[int, str]:
    """Label id -> its first name (DiT lists several synonyms per id)."""
    names: dict[int, str] = {}
    for name, label in getattr(pipe, "labels", {}).items():
        names.setdefault(int(label), name)
    return names


def _open_image(path: str, option: str, mode: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError) as error:
        raise CommandError(f"{option} {path!r}: cannot read the image ({type(error).__name__})") from None


def call_inputs(pipe, args) -> Inputs:
    """Rows (prompts or class labels) and the call arguments the pipeline's __call__ signature asks for."""
    parameters = inspect.signature(pipe.__call__).parameters
    name = type(pipe).__name__
    if "class_labels" in parameters:
        if args.prompt is not None:
            raise CommandError(f"{name} takes class labels, not prompts: use --classes")
        classes = args.classes or (["cat", "ship"] if args.model == "builtin" else None)
        if not classes:
            raise CommandError(f"{name} is class-conditional: give --classes")
        words = [c for c in classes if not c.isdigit()]
        if words and not hasattr(pipe, "get_label_ids"):
            raise CommandError(f"{name} has no class names: give --classes as label ids, got {' '.join(words)}")
        try:
            ids = [int(c) if c.isdigit() else pipe.get_label_ids([c])[0] for c in classes]
        except (KeyError, ValueError) as error:  # the pipeline's own refusal of a name
            raise CommandError(f"--classes: {error}") from None
        named = _class_names(pipe)
        unknown = [i for i in ids if named and i not in named]
        if unknown:
            raise CommandError(f"--classes: class label {unknown[0]} is out of range: {name} has labels "
                               f"{min(named)}..{max(named)}")
        inputs = Inputs("class_labels", ids, [named.get(i, str(i)) if c.isdigit() else c for c, i in zip(classes, ids)])
    elif "prompt" in parameters:
        if args.prompt is None:
            raise CommandError(f"{name} is text-conditioned: give --prompt" +
                               (" (--classes is for class-conditional pipelines)" if args.classes else ""))
        short = [p if len(p) <= 24 else p[:23] + "…" for p in args.prompt]
        inputs = Inputs("prompt", list(args.prompt), short)
    else:
        raise CommandError(f"{name} takes neither prompts nor class labels")

    given = {"negative_prompt": args.negative_prompt, "height": args.height, "width": args.width,
             "num_frames": args.num_frames}
    for key, value in given.items():
        if value is None:
            continue
        if key not in parameters:
            raise CommandError(f"--{key.replace('_', '-')}: {name} takes no {key}")
        inputs.kwargs[key] = inputs.record[key] = value

    # Image inputs, read from the signature. A ControlNet pipeline without a `control_image` argument takes its
    # control image as `image` (StableDiffusionControlNetPipeline and its SDXL sibling).
    sources = {"image": args.image, "mask_image": args.mask_image, "control_image": args.control_image}
    wanted = {key: key for key in IMAGE_INPUTS if key in parameters}  # call argument -> the input it takes
    if "image" in wanted and "control_image" not in wanted and getattr(pipe, "controlnet", None) is not None:
        wanted["image"] = "control_image"
    for key, (option, what) in IMAGE_INPUTS.items():
        if sources[key] is not None and key not in wanted.values():
            raise CommandError(f"{option}: {name} takes no {what.split(' ', 1)[1]}")
    for argument, key in wanted.items():
        option, what = IMAGE_INPUTS[key]
        if sources[key] is None:
            raise CommandError(f"{name} needs {what}: give {option} FILE")
        inputs.kwargs[argument] = _open_image(sources[key], option, "L" if key == "mask_image" else "RGB")
        inputs.record[argument] = sources[key]
    return inputs


@dataclass
class Column:
    setting: Setting
    images: list  # one PIL image per row (video: the middle frame)
    saturation: list  # per row; video: over every frame
    clipping: list


def _images(output) -> tuple[list, list]:
    """(shown image per sample, every frame per sample) from a pipeline output: images or video frames."""
    if getattr(output, "images", None) is not None:
        return list(output.images), [[image] for image in output.images]
    frames = output.frames  # video pipelines: [B][T] PIL frames with output_type="pil"
    return [clip[len(clip) // 2] for clip in frames], [list(clip) for clip in frames]


def run(args) -> int:
    """Parse-validated args -> grid PNG and table; CommandError for what the user can fix."""
    import torch

    from . import guide
    from .evaluation.files import save_png
    from .evaluation.metrics import per_image_clipping, per_image_saturation
    from .runtime import load_pipeline

    settings = check_args(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    if args.scheduler is not None:
        import diffusers

        pipe.scheduler = getattr(diffusers, args.scheduler).from_config(pipe.scheduler.config)
    with guide(pipe, _guidance.CFG(1.0)):  # refuses a pipeline or scheduler apg cannot guide, before any work
        pass
    inputs = call_inputs(pipe, args)

    rows = [(value, name, s) for value, name in zip(inputs.values, inputs.names) for s in args.seeds]
    per_row = {key: [inputs.kwargs.pop(key)] * len(rows) for key in ("negative_prompt",) if key in inputs.kwargs}
    columns, video = [], False
    for i, column_setting in enumerate(settings):
        pipe.set_progress_bar_config(disable=not args.progress, leave=False,
                                     desc=f"[{i + 1}/{len(settings)}] {column_title(column_setting)}")
        # One generator per image, on the CPU: the same noise on every device and for every column.
        generators = [torch.Generator().manual_seed(s) for _, _, s in rows]
        with guide(pipe, column_setting.build()):
            output = pipe(**{inputs.key: [value for value, _, _ in rows]}, **per_row, **inputs.kwargs,
                          num_inference_steps=args.steps, generator=generators, output_type="pil")
        shown, clips = _images(output)
        video = video or any(len(clip) > 1 for clip in clips)
        columns.append(Column(column_setting, shown, [float(per_image_saturation(c).mean()) for c in clips],
                              [float(per_image_clipping(c).mean()) for c in clips]))

    row_labels = [f"{name} / seed {s}" for _, name, s in rows]
    print(format_table(row_labels, columns))
    grid, boxes = draw_grid(row_labels, columns, args.cell, video=video)
    record = {"model": args.model, "pipeline": type(pipe).__name__, "steps": args.steps,
              "scheduler": type(pipe.scheduler).__name__, "dtype": str(pipe.dtype).removeprefix("torch."),
              "seeds": args.seeds, inputs.key: inputs.values, **inputs.record,
              "columns": [c.setting.to_dict() for c in columns], "cells": boxes}
    with writing("--out", args.out):
        save_png(args.out, grid, text={"apg-compare": json.dumps(record, default=str)})
    print(f"wrote {args.out}")
    return 0


def column_title(setting: Setting) -> str:
    """'APG w=8': a column of the table (its parameters are in the grid's header)."""
    return f"{setting.cls.label} w={setting.scale:g}"


def format_table(row_labels, columns) -> str:
    """Saturation S and clipped fraction C per image (rows) and method/scale (columns), with the means."""
    titles = [column_title(c.setting) for c in columns]
    width = max(len(label) for label in row_labels + ["mean", "S / C (clipped)"])
    cell = max(16, *(len(t) for t in titles))
    lines = ["S / C (clipped)".ljust(width) + "".join(f" | {t:>{cell}}" for t in titles)]

    def row(label, pairs):
        return label.ljust(width) + "".join(f" | {f'{s:.3f} {100 * c:6.2f}%':>{cell}}" for s, c in pairs)

    for r, label in enumerate(row_labels):
        lines.append(row(label, [(c.saturation[r], c.clipping[r]) for c in columns]))
    mean = [(sum(c.saturation) / len(c.saturation), sum(c.clipping) / len(c.clipping)) for c in columns]
    lines.append(row("mean", mean))
    return "\n".join(lines)


def _fit(draw, text: str, font, width: float) -> str:
    """`text` cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw, text: str, font, width: float) -> list[str]:
    """`text` word-wrapped to lines of at most `width` pixels (a word too long is cut with an ellipsis)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(_fit(draw, word, font, width))
    return lines


def draw_grid(row_labels, columns, cell: int, *, video: bool = False):
    """(grid image, cell boxes): one header per method spanning its scales, then w per column; rows =
    condition and seed; under each cell its saturation S and clipped fraction C. boxes[c][r] = [x, y, w, h]."""
    from PIL import Image, ImageDraw

    from ._fonts import font as load_font

    font, small = load_font(11), load_font(10)
    line, pad = 13, 4
    first = columns[0].images[0]
    cell_h = max(8, round(cell * first.height / first.width))  # keep the aspect ratio of non-square images
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    groups: list[tuple[int, int]] = []  # (first column, count): runs of one guidance setting but w
    for c, column in enumerate(columns):
        previous = columns[groups[-1][0]] if groups else None
        if previous is not None and previous.setting == column.setting.replace(scale=previous.setting.scale):
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((c, 1))
    gap = max(6, cell // 12)  # white space between methods
    xs = [0] * len(columns)  # each column's left edge
    for g, (start, count) in enumerate(groups):
        for c in range(start, start + count):
            xs[c] = c * cell + g * gap
    legend = ["under each image, S: mean HSV saturation; C: share of pixel values clipped to 0 or 255 "
              "(burnt or crushed)"]
    if video:
        legend.append("video: the middle frame is shown; S and C are over every frame")
    intervals = {column.setting.interval for column in columns}
    shared = len(intervals) == 1 and None not in intervals  # one interval for all: said once, in the legend
    if shared:
        legend.append(f"every method guides only where {interval_text(next(iter(intervals)))} (EDM noise level σ)")
    headers = []
    for g, (start, count) in enumerate(groups):
        span = count * cell - 2 * pad
        label, detail = columns[start].setting.cls.label, columns[start].setting.describe(interval=not shared)
        lines = _wrap(scratch, detail, small, span) if detail else []
        words = [label, *detail.split()]
        if all(scratch.textlength(word, font=font) <= span for word in words) and len(lines) <= 3:
            headers.append([label, *lines])
        else:  # too narrow for its own description: a key here, the description in the legend
            key = f"({chr(ord('a') + g)})"
            headers.append([key])
            legend.append(f"{key} {label}" + (f": {detail}" if detail else ""))
    left = int(max(scratch.textlength(label, font=font) for label in row_labels)) + 2 * pad
    top = (max(len(h) for h in headers) + 1) * line + 2 * pad
    caption = 2 * line
    width = left + xs[-1] + cell
    legend_lines = [piece for text in legend for piece in _wrap(scratch, text, small, width - 2 * pad)]
    height = top + len(row_labels) * (cell_h + caption + pad) + len(legend_lines) * line + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)

    for (start, count), lines in zip(groups, headers):
        x0, x1 = left + xs[start], left + xs[start + count - 1] + cell
        for k, text in enumerate(lines):
            f = font if k == 0 else small
            draw.text(((x0 + x1) / 2, pad + k * line), text, fill="black" if k == 0 else "dimgray", font=f, anchor="ma")
        y = pad + len(lines) * line + 1
        draw.line((x0 + pad, y, x1 - pad, y), fill="gray")  # the span of the group
    w_row = top - line - pad // 2
    for c, column in enumerate(columns):
        x = left + xs[c] + cell / 2
        text = _fit(draw, f"w={column.setting.scale:g}", font, cell - 2)
        draw.text((x, w_row), text, fill="black", font=font, anchor="ma")

    boxes = [[None] * len(row_labels) for _ in columns]
    for r, label in enumerate(row_labels):
        y = top + r * (cell_h + caption + pad)
        draw.text((pad, y + cell_h / 2), label, fill="black", font=font, anchor="lm")
        for c, column in enumerate(columns):
            x = left + xs[c]
            # Nearest keeps the pixels of 32x32 images honest; larger images are resized smoothly.
            source = column.images[r].convert("RGB")
            resample = Image.NEAREST if source.width < cell else Image.BICUBIC
            grid.paste(source.resize((cell, cell_h), resample), (x, y))
            boxes[c][r] = [x, y, cell, cell_h]
            texts = (f"S={column.saturation[r]:.3f}", f"C={100 * column.clipping[r]:.1f}%")
            if any(draw.textlength(text, font=small) > cell - 2 for text in texts):
                texts = tuple(text[2:] for text in texts)  # narrow cells: the numbers, S above C
            for k, text in enumerate(texts):
                draw.text((x + cell / 2, y + cell_h + 1 + k * line), _fit(draw, text, small, cell - 2),
                          fill="black", font=small, anchor="ma")
    y = height - len(legend_lines) * line - pad // 2
    for k, text in enumerate(legend_lines):
        draw.text((pad, y + k * line), text, fill="dimgray", font=small)
    return grid, boxes


