"""Time one guidance step: stock CFG, apg.CFG, apg.APG (all knobs on) and Diffusers' normalized_guidance.

    python benchmarks/bench_guidance.py [--repeats 400] [--threads N]

All methods run on the same tensors in one process, alternating in short blocks; the table reports medians and
ratios against the stock CFG line that Diffusers pipelines hard-code, plus the max relative error of APG against a
float64 evaluation. apg.APG is what users get (on the CPU the fused kernel, see apg.kernel_status()); the
"torch ops" column is the same step in plain torch ops (apg.guidance.apg_torch), as on GPUs.
"""

import argparse
import statistics
import time

import torch

import apg
from apg import APG, CFG
from apg.guidance import apg_torch

W, ETA, R, BETA = 7.5, 0.0, 15.0, -0.5


def median_seconds(fns, repeats, rounds=10):
    """Median seconds per call of each fn. Methods alternate in short blocks, so background load hits all
    alike while each block runs with its own allocator pattern (one method's big float64 temporaries would
    otherwise make the next method's allocations page-fault)."""
    times = [[] for _ in fns]
    block = max(1, repeats // rounds)
    for _ in range(rounds):
        for fn, bucket in zip(fns, times):
            for _ in range(3):
                fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def reference_float64(pred_cond, pred_uncond, steps):
    """Algorithm 1 in float64 after `steps` calls on the same inputs (momentum accumulates)."""
    cond, diff = pred_cond.double(), (pred_cond - pred_uncond).double()
    dims = tuple(range(1, cond.ndim))
    running = torch.zeros_like(diff)
    for _ in range(steps):
        running = diff + BETA * running
    norm = torch.linalg.vector_norm(running, dim=dims, keepdim=True)
    update = running * torch.clamp(R / norm, max=1.0)
    par = (update * cond).sum(dims, keepdim=True) / (cond * cond).sum(dims, keepdim=True) * cond
    return cond + (W - 1) * (update - par + ETA * par)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; apg.APG runs: {apg.kernel_status()}")
    print(f"APG: w={W}, eta={ETA}, norm_threshold={R}, momentum={BETA}; Diffusers: guidance_scale={W - 1}, "
          "use_original_formulation=True\n")
    header = f"{'shape':>18} {'dtype':>9} | {'stock CFG':>9} {'apg.CFG':>9} {'apg.APG':>9} {'torch ops':>9} " \
             f"{'Diffusers':>9} | {'APG/CFG':>7} {'Diff/APG':>8} | {'APG err':>8}"
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for shape in [(2, 4, 128, 128), (1, 4096, 64)]:
        for dtype in [torch.float32, torch.bfloat16]:
            pred_cond = torch.randn(shape, generator=gen).to(dtype)
            pred_uncond = (pred_cond.float() + 0.5 * torch.randn(shape, generator=gen)).to(dtype)
            ours, cfg = APG(W, eta=ETA, norm_threshold=R, momentum=BETA), CFG(W)
            buffer = MomentumBuffer(BETA)

            running = [None]

            def torch_ops():
                _, running[0] = apg_torch(pred_cond, pred_uncond, running[0], W, ETA, R, BETA)

            t_stock, t_cfg, t_apg, t_ops, t_diff = median_seconds(
                [
                    lambda: pred_uncond + W * (pred_cond - pred_uncond),
                    lambda: cfg(pred_cond, pred_uncond),
                    lambda: ours(pred_cond, pred_uncond),
                    torch_ops,
                    lambda: normalized_guidance(pred_cond, pred_uncond, W - 1, buffer, ETA, R, True),
                ],
                args.repeats,
            )
            ours.reset()
            steps = 30
            for _ in range(steps):
                out = ours(pred_cond, pred_uncond)
            ref = reference_float64(pred_cond, pred_uncond, steps)
            err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
            print(f"{str(list(shape)):>18} {str(dtype).split('.')[-1]:>9} | {t_stock * 1e6:8.0f}u {t_cfg * 1e6:8.0f}u "
                  f"{t_apg * 1e6:8.0f}u {t_ops * 1e6:8.0f}u {t_diff * 1e6:8.0f}u | {t_apg / t_stock:7.2f} {t_diff / t_apg:8.1f} | {err:8.1e}")
    print("\nu = microseconds (median). APG/CFG: apg.APG over the stock CFG line (target <= 3); Diff/APG: "
          "Diffusers' normalized_guidance over apg.APG (target >= 10). APG err: max |APG - float64| / max |float64| "
          "(bfloat16 rows: against the float64 formula on the bfloat16 inputs).")


if __name__ == "__main__":
    main()
