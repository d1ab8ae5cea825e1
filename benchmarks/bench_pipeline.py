"""Overhead of apg.guide on a whole pipeline call: stock CFG vs APG, small random pipelines, CPU.

    python benchmarks/bench_pipeline.py [--repeats 30] [--steps 10] [--size 64] [--threads 1] [--interval LOW,HIGH]
    python benchmarks/bench_pipeline.py --wan [--frames 9]   # separate-pass video pipeline (Wan)

The default case is a StableDiffusionPipeline with an SD-shaped UNet (one [uncond, cond] pass per step); `--wan`
times a WanPipeline (two transformer passes per step, cond then uncond). `--interval` adds a variant, APG
guiding only where LOW < sigma <= HIGH (e.g. 0.28,5.42, the SDXL one); outside it the unconditional pass is
skipped (apg/_skip.py; benchmarks/bench_skipping.py measures what that saves). All variants run the same
pipeline object with the same seed, interleaved call by call so background load hits them alike; the verdict
is the ratio of median wall times (target <= 1.03); the step wrapper and the run-time verification within it
are timed directly too. The ratio of median CPU times of this process is printed too: on a shared machine it is the
steadier of the two.
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


def _interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    return low, high


def sd_case(args):
    """(pipe, call kwargs, scale, APG settings, description): SD-shaped UNet, 2 levels, cross-attention."""
    pipe = tiny_sd_pipeline(args.scheduler, unet_channels=(32, 64))
    kwargs = dict(prompt="a photo of a cat", negative_prompt="a blue car", height=args.size, width=args.size,
                  num_inference_steps=args.steps, output_type="latent")
    unet = sum(p.numel() for p in pipe.unet.parameters())
    return pipe, kwargs, 7.5, apg.PRESETS["sd21"], (
        f"SD-shaped UNet {unet / 1e6:.2f}M params, {args.size // 2}x{args.size // 2} latents, {args.steps} steps "
        f"({args.scheduler}), {args.repeats} interleaved repeats, {args.threads} thread(s)")


def wan_case(args):
    """The same for Wan: two transformer passes per step, cond then uncond; hidden size 96, 16 latent channels."""
    pipe = tiny_wan_pipeline(heads=8, layers=2)
    kwargs = dict(wan_call(), height=args.size, width=args.size, num_frames=args.frames,
                  num_inference_steps=args.steps, output_type="latent")
    params = sum(p.numel() for p in pipe.transformer.parameters())
    latents = f"{(args.frames - 1) // 4 + 1}x{args.size // 8}x{args.size // 8}"
    return pipe, kwargs, 5.0, dict(eta=0.0, norm_threshold=10.0, momentum=-0.5), (
        f"Wan transformer {params / 1e6:.2f}M params, 16x{latents} latents, {args.steps} steps (UniPC flow), "
        f"{args.repeats} interleaved repeats, {args.threads} thread(s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (SD latents are half of it)")
    parser.add_argument("--scheduler", default="dpmpp_2m", help="SD case: scheduler of tests/tiny_pipelines.py")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--interval", type=_interval, help="LOW,HIGH: also time APG with this sigma interval")
    parser.add_argument("--wan", action="store_true", help="time WanPipeline (separate passes) instead of SD")
    parser.add_argument("--frames", type=int, default=9, help="--wan: video frames (latent frames: (n - 1) / 4 + 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, kwargs, scale, settings, header = (wan_case if args.wan else sd_case)(args)
    guidance = apg.APG(scale, **settings)

    def stock():
        return pipe(**kwargs, guidance_scale=scale, generator=torch.Generator().manual_seed(0))

    def guided(rule=guidance):
        with apg.guide(pipe, rule):
            return pipe(**kwargs, generator=torch.Generator().manual_seed(0))

    variants = {"stock CFG": stock, "APG (apg.guide)": guided}
    if args.interval:
        within = apg.APG(scale, **settings, interval=args.interval)
        variants[f"APG, interval {args.interval}"] = lambda: guided(within)
        sigmas = []  # what apg.guide passes each step (a module-level list survives its copy of the rule)

        class Seen(apg.CFG):
            def __call__(self, pred_cond, pred_uncond, *, sigma=None, step=None):
                sigmas.append(sigma)
                return super().__call__(pred_cond, pred_uncond, sigma=sigma, step=step)

        guided(Seen(scale))
        inside = sum(args.interval[0] < sigma <= args.interval[1] for sigma in sigmas)
        print(f"interval {args.interval}: {inside} of {len(sigmas)} steps inside")
    for fn in variants.values():  # warm up
        fn()
    names = tuple(variants)
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for repeat in range(args.repeats):
        order = list(variants.items())
        for name, fn in order if repeat % 2 == 0 else order[::-1]:  # ABBA: a load trend hits both alike
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    medians = {name: statistics.median(values) for name, values in wall.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    ratio = medians[names[1]] / medians[names[0]]
    print(header)
    for name in names:
        print(f"  {name:28s} median wall {medians[name] * 1e3:8.1f} ms   cpu {cpu_medians[name] * 1e3:8.1f} ms")
    print(f"  ratio APG / stock, wall time: {ratio:.4f}  (target <= 1.03: {'pass' if ratio <= 1.03 else 'FAIL'})")
    # CPU time of this process is insensitive to other processes competing for the cores.
    print(f"  ratio APG / stock, CPU time:  {cpu_medians[names[1]] / cpu_medians[names[0]]:.4f}")
    if args.interval:
        name = names[2]
        print(f"  ratio APG with interval / stock, wall time: {medians[name] / medians[names[0]]:.4f}, "
              f"CPU time: {cpu_medians[name] / cpu_medians[names[0]]:.4f}")

    # apg's own work per step (x0 conversion, guidance, mapping back), timed directly: a noise-free floor.
    spent, guide_output = [], _run._GuidedRun.guide_output

    def timed(self, *args):
        start = time.perf_counter()
        out = guide_output(self, *args)
        spent.append(time.perf_counter() - start)
        return out

    # The run-time verification (apg/_verify.py) within it: once per call, at the first guided step.
    checked, check = [], _run.check_combination

    def timed_check(*args):
        start = time.perf_counter()
        check(*args)
        checked.append(time.perf_counter() - start)

    _run._GuidedRun.guide_output, _run.check_combination = timed, timed_check
    per_call, per_check = [], []
    for _ in range(5):
        spent.clear(), checked.clear()
        guided()
        per_call.append(sum(spent))
        per_check.append(sum(checked))
    _run._GuidedRun.guide_output, _run.check_combination = guide_output, check
    own, verify = statistics.median(per_call), statistics.median(per_check)
    print(f"  apg's step wrapper: {own * 1e3:.1f} ms per call ({own / medians[names[0]] * 100:.1f}% of the stock call)")
    print(f"  of which the verification: {verify * 1e3:.2f} ms per call, once ({len(checked)} check), "
          f"{verify / medians[names[0]] * 100:.2f}% of the stock call")


if __name__ == "__main__":
    main()
