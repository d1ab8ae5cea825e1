"""APG and CFG with and without the SDXL guidance interval on the built-in model: a figure and its numbers.

    python benchmarks/interval_figure.py [--out docs/interval.png] [--scale 15] [--steps 32]

The figure: one row per variant, one sample per CIFAR-10 class (seed = class id), 2x nearest-neighbour.
The numbers: 100 samples (10 per class, seeds 0..99), mean saturation and the fraction of pixel values outside
[-1, 1] before clamping, the same measurement as benchmarks/bench_builtin.py; and how many of the steps
fall inside the interval (sigma is the EDM noise level, apg.schedulers.noise_level).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_builtin import sample_stats  # noqa: E402

import apg  # noqa: E402

LABEL_WIDTH, ZOOM = 150, 2


def variants(w: float) -> dict[str, apg.Guidance]:
    sdxl = apg.INTERVALS["sdxl"]
    return {
        "CFG w=1": apg.CFG(1.0),
        f"CFG w={w:g}": apg.CFG(w),
        f"CFG w={w:g}, SDXL interval": apg.CFG(w, interval=sdxl),
        f"APG w={w:g}": apg.APG(w, eta=0.0, momentum=-0.5),
        f"APG w={w:g}, SDXL interval": apg.APG(w, eta=0.0, momentum=-0.5, interval=sdxl),
    }


def row(pipe, guidance, steps: int) -> np.ndarray:
    """One sample per class, seed = class id: [32, 10 * 32, 3] uint8."""
    labels = list(range(10))
    generators = [torch.Generator().manual_seed(k) for k in labels]
    with apg.guide(pipe, guidance):
        images = pipe(class_labels=labels, num_inference_steps=steps, generator=generators, output_type="np").images
    return (np.concatenate(list(images), axis=1) * 255).round().astype(np.uint8)


def save_png(image: Image.Image, out: Path) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=out.parent, suffix=".png.partial")
    os.close(fd)
    try:
        image.save(partial, format="PNG", optimize=True)
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, out)
    except BaseException:
        os.unlink(partial)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/interval.png"))
    parser.add_argument("--scale", type=float, default=15.0)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    pipe = apg.load_builtin()
    pipe.set_progress_bar_config(disable=True)

    pipe.scheduler.set_timesteps(args.steps)
    sigmas = pipe.scheduler.sigmas[:-1].double()  # Euler: the EDM sigma of each step
    low, high = apg.INTERVALS["sdxl"]
    inside = int(((sigmas > low) & (sigmas <= high)).sum())
    print(f"{args.steps} Euler (Karras) steps, sigma {float(sigmas[0]):.3g} .. {float(sigmas[-1]):.3g}; "
          f"SDXL interval ({low}, {high}]: {inside} steps inside, {args.steps - inside} outside")

    rows, labels = [], [k for k in range(10) for _ in range(10)]  # 100 samples, 10 per class, seeds 0..99
    print(f"{'variant':28s} saturation  clipped (100 samples)")
    for name, guidance in variants(args.scale).items():
        sat, clipped = sample_stats(pipe, guidance, labels)
        print(f"{name:28s} {sat:10.3f}  {clipped * 100:6.1f}%")
        rows.append((name, row(pipe, guidance, args.steps)))

    strip_h, strip_w = rows[0][1].shape[0] * ZOOM, rows[0][1].shape[1] * ZOOM
    canvas = Image.new("RGB", (LABEL_WIDTH + strip_w, strip_h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, strip) in enumerate(rows):
        canvas.paste(Image.fromarray(strip).resize((strip_w, strip_h), Image.NEAREST), (LABEL_WIDTH, r * strip_h))
        draw.text((6, r * strip_h + strip_h // 2 - 6), name, fill="black")
    save_png(canvas, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
