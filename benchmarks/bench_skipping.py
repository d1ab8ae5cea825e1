"""What skipping saves (apg/_skip.py): model evaluations and wall time of APG with a sigma interval against APG
without one, on a one-pass pipeline (SD-shaped UNet) and a separate-pass one (Wan), small random models, CPU.

    python benchmarks/bench_skipping.py [--repeats 10] [--steps 12] [--size 96] [--threads 1] [--cases sd,wan]

The interval is the middle half of the schedule's sigmas (half the steps outside), so the schedule predicts
(2 * inside + outside) / (2 * steps) = 0.75 of the evaluated batch rows. Per case, interleaved call by call: APG,
APG with the interval, and APG with the interval and skipping off (apg.set_skipping(False): what an interval
cost before). Printed: rows evaluated (counted at the denoiser) against the prediction, and the ratio of median
wall times (and of CPU times, steadier on a shared machine); target: the time ratio tracks the rows ratio, <= 0.85.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]
from bench_pipeline import sd_case, wan_case  # noqa: E402
from tiny_pipelines import count_rows  # noqa: E402

import apg  # noqa: E402


def middle_half(pipe, call, scale) -> tuple[tuple[float, float], list[bool]]:
    """(low, high] holding the middle half of the steps' sigmas, and which steps it holds."""
    sigmas = []

    class Seen(apg.CFG):
        def __call__(self, pred_cond, pred_uncond, *, sigma=None, step=None):
            sigmas.append(sigma)
            return super().__call__(pred_cond, pred_uncond, sigma=sigma, step=step)

    with apg.guide(pipe, Seen(scale)):
        pipe(**call, generator=torch.Generator().manual_seed(0))
    n = len(sigmas)
    interval = (sigmas[3 * n // 4], sigmas[n // 4])  # decreasing sigmas: steps n/4 .. 3n/4 - 1 inside
    return interval, [interval[0] < s <= interval[1] for s in sigmas]


def variants(pipe, call, scale, settings):
    """name -> (guidance, skipping on) of the three timed calls; plus the schedule's predicted rows ratio."""
    interval, inside = middle_half(pipe, call, scale)
    predicted = (2 * sum(inside) + (len(inside) - sum(inside))) / (2 * len(inside))
    return {
        "APG": (apg.APG(scale, **settings), True),
        "APG, interval": (apg.APG(scale, **settings, interval=interval), True),
        "APG, interval, skipping off": (apg.APG(scale, **settings, interval=interval), False),
    }, predicted, f"interval ({interval[0]:.3g}, {interval[1]:.3g}]: {sum(inside)} of {len(inside)} steps inside"


def run_case(pipe, call, scale, settings, repeats):
    """Median wall and CPU seconds and rows per call of each variant, interleaved ABC/CBA; and the prediction."""
    table, predicted, note = variants(pipe, call, scale, settings)
    rows = count_rows(pipe)

    def once(guidance, skip):
        rows.clear()
        with apg.guide(pipe, guidance), apg.set_skipping(skip):
            pipe(**call, generator=torch.Generator().manual_seed(0))
        return sum(rows)

    evaluated = {name: once(*spec) for name, spec in table.items()}  # also the warm-up
    wall, cpu = {name: [] for name in table}, {name: [] for name in table}
    for repeat in range(repeats):
        order = list(table.items())
        for name, spec in order if repeat % 2 == 0 else order[::-1]:  # a load trend hits every variant alike
            start, start_cpu = time.perf_counter(), time.process_time()
            once(*spec)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    medians = {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in table}
    return medians, evaluated, predicted, note


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=96,
                        help="image side in pixels (SD: 48x48 latents, where a half batch costs half; Wan: 12x12)")
    parser.add_argument("--frames", type=int, default=9, help="Wan: video frames")
    parser.add_argument("--scheduler", default="dpmpp_2m", help="SD case: scheduler of tests/tiny_pipelines.py")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="sd,wan", help="comma-separated: sd (one pass), wan (separate passes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    builders = {"sd": sd_case, "wan": wan_case}
    for name in args.cases.split(","):
        if name not in builders:
            parser.error(f"--cases: {name!r} is not one of {sorted(builders)}")
        pipe, call, scale, settings, header = builders[name](args)
        medians, evaluated, predicted, note = run_case(pipe, call, scale, settings, args.repeats)
        print(f"{header}; {note}")
        base_wall, base_cpu = medians["APG"]
        for variant, (wall, cpu) in medians.items():
            print(f"  {variant:28s} rows {evaluated[variant]:4d}   median wall {wall * 1e3:8.1f} ms   "
                  f"cpu {cpu * 1e3:8.1f} ms   ratio wall {wall / base_wall:.3f}  cpu {cpu / base_cpu:.3f}")
        rows_ratio = evaluated["APG, interval"] / evaluated["APG"]
        time_ratio = medians["APG, interval"][0] / base_wall
        verdict = "pass" if time_ratio <= 0.85 else "FAIL"
        print(f"  interval / none: rows {rows_ratio:.3f} (schedule predicts {predicted:.3f}), wall time "
              f"{time_ratio:.3f}, CPU time {medians['APG, interval'][1] / base_cpu:.3f}  (target <= 0.85: {verdict})")


if __name__ == "__main__":
    main()
