"""Overhead of apg.guide on a whole pipeline call: stock CFG vs APG, small random SD-shaped UNet, CPU.

    python benchmarks/bench_pipeline.py [--repeats 30] [--steps 10] [--size 64] [--threads 1]
    python benchmarks/bench_pipeline.py --wan [--frames 9]   # separate-pass video pipeline (Wan)

Both variants run the same StableDiffusionPipeline object with the same seed, interleaved call by call so
background load hits them alike; the verdict is the ratio of median wall times (target <= 1.03). The ratio
of median CPU times of this process is printed too: on a shared machine it is the steadier of the two.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from tiny_pipelines import tiny_sd_pipeline  # noqa: E402
from tiny_video import tiny_wan_pipeline, wan_call  # noqa: E402

import apg  # noqa: E402
from apg import _run  # noqa: E402


def wan_case(args):
    """Wan (two transformer passes per step, cond then uncond): pipe, stock, guided and a description."""
    pipe = tiny_wan_pipeline(heads=8, layers=2)  # hidden size 96, 16 latent channels
    guidance = apg.APG(5.0, eta=0.0, norm_threshold=10.0, momentum=-0.5)
    kwargs = dict(wan_call(), height=args.size, width=args.size, num_frames=args.frames,
                  num_inference_steps=args.steps, output_type="latent")

    def stock():
        return pipe(**kwargs, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))

    def guided():
        with apg.guide(pipe, guidance):
            return pipe(**kwargs, generator=torch.Generator().manual_seed(0))

    params = sum(p.numel() for p in pipe.transformer.parameters())
    latents = f"{(args.frames - 1) // 4 + 1}x{args.size // 8}x{args.size // 8}"
    return pipe, stock, guided, (f"Wan transformer {params / 1e6:.2f}M params, 16x{latents} latents, {args.steps} "
                                 f"steps (UniPC flow), {args.repeats} interleaved repeats, {args.threads} thread(s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (latents are half of it)")
    parser.add_argument("--scheduler", default="dpmpp_2m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wan", action="store_true", help="time WanPipeline (separate passes) instead of SD")
    parser.add_argument("--frames", type=int, default=9, help="--wan: video frames (latent frames: (n - 1) / 4 + 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_sd_pipeline(args.scheduler, unet_channels=(32, 64))  # SD-shaped: 2 levels, cross-attention
    guidance = apg.APG.from_preset("sd21", 7.5)
    kwargs = dict(prompt="a photo of a cat", negative_prompt="a blue car", height=args.size, width=args.size,
                  num_inference_steps=args.steps, output_type="latent")

    def stock():
        return pipe(**kwargs, guidance_scale=7.5, generator=torch.Generator().manual_seed(0))

    def guided():
        with apg.guide(pipe, guidance):
            return pipe(**kwargs, generator=torch.Generator().manual_seed(0))

    if args.wan:
        pipe, stock, guided, header = wan_case(args)
    for fn in (stock, guided):  # warm up
        fn()
    names = ("stock CFG", "APG (apg.guide)")
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for repeat in range(args.repeats):
        order = list(zip(names, (stock, guided)))
        for name, fn in order if repeat % 2 == 0 else order[::-1]:  # ABBA: a load trend hits both alike
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    medians = {name: statistics.median(values) for name, values in wall.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    ratio = medians[names[1]] / medians[names[0]]
    if args.wan:
        print(header)
    else:
        unet = sum(p.numel() for p in pipe.unet.parameters())
        print(f"SD-shaped UNet {unet / 1e6:.2f}M params, {args.size // 2}x{args.size // 2} latents, {args.steps} steps "
              f"({args.scheduler}), {args.repeats} interleaved repeats, {args.threads} thread(s)")
    for name in names:
        print(f"  {name:16s} median wall {medians[name] * 1e3:8.1f} ms   cpu {cpu_medians[name] * 1e3:8.1f} ms")
    print(f"  ratio APG / stock, wall time: {ratio:.4f}  (target <= 1.03: {'pass' if ratio <= 1.03 else 'FAIL'})")
    # CPU time of this process is insensitive to other processes competing for the cores.
    print(f"  ratio APG / stock, CPU time:  {cpu_medians[names[1]] / cpu_medians[names[0]]:.4f}")

    # apg's own work per step (x0 conversion, guidance, mapping back), timed directly: a noise-free floor.
    spent, guide_output = [], _run._GuidedRun.guide_output

    def timed(self, *args):
        start = time.perf_counter()
        out = guide_output(self, *args)
        spent.append(time.perf_counter() - start)
        return out

    _run._GuidedRun.guide_output = timed
    per_call = []
    for _ in range(5):
        spent.clear()
        guided()
        per_call.append(sum(spent))
    _run._GuidedRun.guide_output = guide_output
    own = statistics.median(per_call)
    print(f"  apg's step wrapper: {own * 1e3:.1f} ms per call ({own / medians[names[0]] * 100:.1f}% of the stock call)")


if __name__ == "__main__":
    main()
