"""Built-in model: speed (load, sampling) and the rank study behind the shipped parameter file.

    python benchmarks/bench_builtin.py speed [--threads 1]
    python benchmarks/bench_builtin.py ranks --data ../shared/data/cifar10-jpeg.tar.gz --ranks 16 64 256 full

`speed`: loading after `import apg` (fresh interpreter), and 16 images x 32 steps with the pipeline's own
CFG line (the baseline) and under `apg.guide` with APG; median of --repeats runs, ratio to the baseline.
`ranks`: for each rank (or "full", every eigenvector), 100 samples (10 per class, seeds 0..99, 32 Euler
steps) with CFG w=1, CFG w=15 and APG w=15 (eta=0, beta=-0.5, r=0): mean saturation and the fraction of
pixel values outside [-1, 1] before clamping; and the saturation of the CIFAR-10 (JPEG) test images.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import apg
from apg.evaluation import saturation

# Loading = importing Diffusers (most of it) + reading the 16 MB folder; printed as "total import_part".
LOAD = ("import time, apg; t = time.perf_counter(); import apg.builtin; i = time.perf_counter() - t; "
        "apg.load_builtin(); print(time.perf_counter() - t, i)")


def bench_speed(repeats: int) -> None:
    loads = [[float(v) for v in subprocess.run([sys.executable, "-c", LOAD], check=True, capture_output=True,
                                               text=True).stdout.split()] for _ in range(repeats)]
    total, imports = (statistics.median(column) for column in zip(*loads))
    print(f"load_builtin() after import apg: median {total:.2f} s over {repeats} fresh interpreters "
          f"({imports:.2f} s of it importing Diffusers)")
    pipe = apg.load_builtin()
    pipe.set_progress_bar_config(disable=True)
    labels = list(range(10)) + list(range(6))  # 16 images

    def run(guidance):
        """(wall seconds, process CPU seconds) of one 16-image call."""
        generators = [torch.Generator().manual_seed(i) for i in range(len(labels))]
        start, cpu = time.perf_counter(), time.process_time()
        if guidance is None:
            pipe(class_labels=labels, guidance_scale=15.0, num_inference_steps=32, generator=generators, output_type="pt")
        else:
            with apg.guide(pipe, guidance):
                pipe(class_labels=labels, num_inference_steps=32, generator=generators, output_type="pt")
        return time.perf_counter() - start, time.process_time() - cpu

    run(None)  # warm-up: builds the model's float32 cache
    print(f"torch threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} (other work slows wall time)")
    baseline = None
    for name, guidance in (("pipeline CFG w=15 (baseline)", None), ("apg.guide APG w=15", apg.APG(15.0))):
        wall, cpu = (statistics.median(column) for column in zip(*(run(guidance) for _ in range(repeats))))
        baseline = baseline or wall
        print(f"16 images x 32 steps, {name}: median {wall:.2f} s wall ({wall / baseline:.2f}x baseline), "
              f"{cpu:.2f} s CPU")


def sample_stats(pipe, guidance, labels) -> tuple[float, float]:
    """(mean saturation, fraction of values outside [-1, 1] before clamping) of one guided batch."""
    final = {}

    def keep_latents(pipe, i, t, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    generators = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    with apg.guide(pipe, guidance):
        images = pipe(class_labels=labels, num_inference_steps=32, generator=generators, output_type="pt",
                      callback_on_step_end=keep_latents).images
    return saturation(images), float((final["latents"].abs() > 1).float().mean())


def bench_ranks(data: str, ranks: list[str], moments_cache: str | None) -> None:
    from apg.builtin.fit import build_pipeline, class_moments, read_split, truncate

    cache = Path(moments_cache) if moments_cache else None
    if cache is not None and cache.is_file():
        classes, moments = pickle.loads(cache.read_bytes())
    else:
        classes, images, labels = read_split(data, "train")
        moments = class_moments(images, labels, len(classes))
        if cache is not None:
            cache.write_bytes(pickle.dumps((classes, moments), protocol=4))
    test_classes, test_images, _ = read_split(data, "test")
    print(f"CIFAR-10 (JPEG) test set, {len(test_images)} images: saturation {saturation(torch.from_numpy(test_images)):.3f}")
    dim = moments[0][0].shape[0]
    labels = [k for k in range(len(classes)) for _ in range(10)]
    methods = {"CFG w=1": apg.CFG(1.0), "CFG w=15": apg.CFG(15.0), "APG w=15": apg.APG(15.0, eta=0.0, momentum=-0.5)}
    print("rank | " + " | ".join(f"{m} sat / clipped" for m in methods))
    for rank in ranks:
        r = dim - 1 if rank == "full" else int(rank)
        pipe = build_pipeline(truncate(moments, r), classes)
        pipe.set_progress_bar_config(disable=True)
        cells = [sample_stats(pipe, g, labels) for g in methods.values()]
        print(f"{rank} | " + " | ".join(f"{s:.3f} / {c:.1%}" for s, c in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed")
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--threads", type=int, help="torch threads (on a busy machine 1 avoids OpenMP spin-waits)")
    ranks = sub.add_parser("ranks")
    ranks.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    ranks.add_argument("--ranks", nargs="+", default=["16", "32", "64", "128", "256", "full"])
    ranks.add_argument("--moments-cache", help="pickle of the per-class eigendecompositions (written if missing)")
    args = parser.parse_args()
    if args.command == "speed":
        if args.threads:
            torch.set_num_threads(args.threads)
        bench_speed(args.repeats)
    else:
        bench_ranks(args.data, args.ranks, args.moments_cache)


if __name__ == "__main__":
    main()
