"""The `apg` command: `apg compare` draws CFG against APG (and momentum CFG) from the same seeds.

    apg compare --model builtin --classes cat ship --scales 1 4 8 15 --seeds 0 1 --out grid.png
    apg compare --model stabilityai/sdxl-turbo --prompt "a red fox" --scales 3 7 12 --out fox.png
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from .guidance import PRESETS

METHOD_LABELS = {"cfg": "CFG", "apg": "APG", "mcfg": "MomentumCFG"}


class CommandError(Exception):
    """A user-facing failure: printed as one line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apg", description="Adaptive projected guidance for Diffusers pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("eval", add_help=False, help="evaluation: generate, score, sweep, report (the same as apg-eval)")
    compare = sub.add_parser("compare", help="side-by-side grid of CFG and APG from the same seeds, with saturation",
                             description=__doc__.splitlines()[0])
    compare.add_argument("--model", default="builtin",
                         help="'builtin' (offline CIFAR-10 model, default), a Hugging Face hub id or a local folder")
    what = compare.add_mutually_exclusive_group()
    what.add_argument("--classes", nargs="+", help="class names or ids, for class-conditional pipelines (builtin: cat ship)")
    what.add_argument("--prompt", nargs="+", help="one or more prompts, for text-to-image pipelines")
    compare.add_argument("--scales", nargs="+", type=float, default=[1.0, 4.0, 8.0, 15.0], help="guidance scales w")
    compare.add_argument("--seeds", nargs="+", type=int, default=[0], help="one image per seed and condition")
    compare.add_argument("--methods", nargs="+", choices=list(METHOD_LABELS), default=["cfg", "apg"],
                         help="cfg, apg, mcfg (momentum CFG); default: cfg apg")
    compare.add_argument("--preset", choices=sorted(PRESETS), help="APG's eta, r and beta from the paper")
    compare.add_argument("--eta", type=float, help="APG: weight of the parallel component (default 0)")
    compare.add_argument("--norm-threshold", type=float, help="APG/momentum CFG: r, 0 = off (default 0)")
    compare.add_argument("--momentum", type=float, help="APG/momentum CFG: beta (default -0.5)")
    compare.add_argument("--scheduler", help="scheduler class, e.g. DDIMScheduler, built from the pipeline's config")
    compare.add_argument("--steps", type=int, default=32, help="inference steps (default 32)")
    compare.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    compare.add_argument("--cell", type=int, default=128, help="grid cell size in pixels (default 128)")
    compare.add_argument("--out", default="apg-compare.png", help="grid PNG to write (default apg-compare.png)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:  # `apg eval ...` is `apg-eval ...`
        from .evaluation.cli import main as evaluate

        return evaluate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return compare(args)
    except CommandError as error:
        print(f"apg {args.command}: error: {error}", file=sys.stderr)
        return 2


def load_pipeline(model: str, device):
    """apg.runtime.load_pipeline with its errors as one-line command errors."""
    from .runtime import ModelLoadError
    from .runtime import load_pipeline as load

    try:
        return load(model, device)
    except ModelLoadError as error:
        raise CommandError(str(error)) from None


def make_guidances(args) -> dict[str, list]:
    """{method: [guidance per scale]} from the command's options."""
    from .evaluation.generation import make_guidance

    params = {"eta": args.eta, "norm_threshold": args.norm_threshold, "momentum": args.momentum}
    out = {}
    for method in args.methods:
        if method == "cfg":
            method_params, preset = {}, None
        elif method == "mcfg":
            method_params, preset = {k: v for k, v in params.items() if k != "eta"}, None
        else:
            method_params, preset = params, args.preset  # make_guidance refuses a preset plus explicit values
        out[method] = [make_guidance(method, w, preset=preset, **method_params) for w in args.scales]
    return out


def _conditions(pipe, args) -> tuple[str, list, list[str]]:
    """(call argument, values, row labels) for class labels or prompts."""
    parameters = inspect.signature(pipe.__call__).parameters
    if args.prompt is not None:
        if "prompt" not in parameters:
            raise CommandError(f"{type(pipe).__name__} takes class labels, not prompts: use --classes")
        return "prompt", list(args.prompt), [p if len(p) <= 24 else p[:23] + "…" for p in args.prompt]
    if "class_labels" not in parameters:
        raise CommandError(f"{type(pipe).__name__} is a text-to-image pipeline: give --prompt")
    classes = args.classes or (["cat", "ship"] if args.model == "builtin" else None)
    if not classes:
        raise CommandError("give --classes for a class-conditional pipeline")
    ids = [int(c) if c.isdigit() else pipe.get_label_ids([c])[0] for c in classes]
    return "class_labels", ids, list(classes)


def compare(args) -> int:
    import torch

    from . import guide
    from .evaluation import per_image_saturation
    from .schedulers import SUPPORTED_SCHEDULERS

    if args.steps < 1:
        raise CommandError(f"--steps must be >= 1, got {args.steps}")
    if args.cell < 16:
        raise CommandError(f"--cell must be >= 16 pixels, got {args.cell}")
    if args.preset is not None and "apg" not in args.methods:
        raise CommandError(f"--preset {args.preset} applies to apg, which is not among --methods {args.methods}")
    given = [f"--{k.replace('_', '-')}" for k in ("eta", "norm_threshold", "momentum") if getattr(args, k) is not None]
    if given and not {"apg", "mcfg"} & set(args.methods):
        raise CommandError(f"{' '.join(given)} apply to apg and mcfg, neither of which is among --methods {args.methods}")
    try:
        guidances = make_guidances(args)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    from .runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise CommandError(str(error)) from None
    pipe = load_pipeline(args.model, device)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler is not None:
        if args.scheduler not in SUPPORTED_SCHEDULERS:
            raise CommandError(f"--scheduler {args.scheduler!r} is not one of {sorted(SUPPORTED_SCHEDULERS)}")
        import diffusers

        pipe.scheduler = getattr(diffusers, args.scheduler).from_config(pipe.scheduler.config)
    try:
        key, values, names = _conditions(pipe, args)
        rows = [(value, name, seed) for value, name in zip(values, names) for seed in args.seeds]
        columns, images = [], []  # images[c][r]: PIL image of row r in column c
        for method, per_scale in guidances.items():
            for w, guidance in zip(args.scales, per_scale):
                generators = [torch.Generator(device).manual_seed(seed) for _, _, seed in rows]
                with guide(pipe, guidance):
                    out = pipe(**{key: [value for value, _, _ in rows]}, num_inference_steps=args.steps,
                               generator=generators, output_type="pil")
                columns.append(f"{METHOD_LABELS[method]} w={w:g}")
                images.append(out.images)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    saturations = [per_image_saturation(column) for column in images]  # [columns][rows]
    row_labels = [f"{name} / seed {seed}" for _, name, seed in rows]
    print(format_table(row_labels, columns, saturations))
    grid = draw_grid(images, row_labels, columns, saturations, args.cell)
    record = {"model": args.model, "steps": args.steps, "scheduler": type(pipe.scheduler).__name__,
              "guidance": {m: [g.to_dict() for g in gs] for m, gs in guidances.items()}}
    from .evaluation.files import save_png

    save_png(args.out, grid, text={"apg-compare": json.dumps(record)})
    print(f"wrote {args.out}")
    return 0


def format_table(row_labels, columns, saturations) -> str:
    """Saturation per image (rows) and method/scale (columns), with the column means."""
    width = max(len(label) for label in row_labels + ["mean"])
    lines = ["saturation".ljust(width) + "".join(f" | {c:>16}" for c in columns)]
    for r, label in enumerate(row_labels):
        lines.append(label.ljust(width) + "".join(f" | {s[r]:16.3f}" for s in saturations))
    lines.append("mean".ljust(width) + "".join(f" | {s.mean():16.3f}" for s in saturations))
    return "\n".join(lines)


def draw_grid(images, row_labels, columns, saturations, cell: int):
    """Columns = method and scale, rows = condition and seed; each cell's saturation under it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line = 14
    left = int(max(font.getlength(label) for label in row_labels)) + 12
    top, caption = 2 * line, line + 2
    grid = Image.new("RGB", (left + len(columns) * cell, top + len(row_labels) * (cell + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(columns):
        draw.text((left + c * cell + 4, line // 2), title, fill="black", font=font)
    for r, label in enumerate(row_labels):
        y = top + r * (cell + caption)
        draw.text((4, y + cell // 2 - line // 2), label, fill="black", font=font)
        for c in range(len(columns)):
            # Nearest keeps the pixels of 32x32 images honest; larger images are resized smoothly.
            source = images[c][r].convert("RGB")
            resample = Image.NEAREST if source.width < cell else Image.BICUBIC
            grid.paste(source.resize((cell, cell), resample), (left + c * cell, y))
            draw.text((left + c * cell + 4, y + cell + 1), f"S={saturations[c][r]:.3f}", fill="black", font=font)
    return grid


if __name__ == "__main__":
    sys.exit(main())
