"""The GPU check: apg's CUDA path timed, its host syncs hunted, its memory measured; one table.

    python benchmarks/gpu_check.py [--quick] [--device cuda|cpu]     (make gpu-check)

On a machine without CUDA it says so in one line and exits 0; `--device cpu` runs the same kit on the CPU (CI
does, with --quick, so the kit itself stays tested). Rows, each timed after a warm-up, medians:

- step: one guidance step on SDXL latents, Flux/SD3 tokens and a Wan-size video latent, in float16, bfloat16
  and float32: the stock CFG line, apg.CFG, apg.APG with every knob on, Diffusers' normalized_guidance with the
  same settings, apg's two Triton kernels (apg/_triton.py, CUDA only) and apg's torch ops under torch.compile
  (plus CUDA graphs, mode="reduce-overhead", on CUDA);
  the ratio is to the stock CFG line. CUDA events time GPU work; the CPU uses perf_counter.
- sync: apg's work inside a guided pipeline call (x0 conversion, guidance, mapping back) under
  torch.cuda.set_sync_debug_mode("error"): any host-device synchronisation raises.
- pipeline: whole calls, stock CFG against apg.guide, on a tiny SD-shaped UNet and on the built-in model.
- skip: whole calls of APG with a sigma interval holding half the steps against APG without one, on an
  SD-shaped UNet (one batched pass) and a small Wan (separate passes): the rows the denoiser evaluated, the
  schedule's prediction (0.75) and the time ratio to APG without one (benchmarks/bench_skipping.py; target <= 0.85).
- generate: apg.evaluation.generate on the built-in model at batch 1, 16 and 64 (images/s); features:
  InceptionV3 at 299x299 as torch-fidelity runs it for FID (random weights: the same compute as the real ones).
- memory: peak allocated memory of a guided call against a stock one, and of one APG step against the stock
  line at the Wan size (CUDA only: torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # bench_evaluation, tiny_pipelines

import diffusers  # noqa: E402

import apg  # noqa: E402
from apg.guidance import apg_torch  # noqa: E402

W, ETA, R, BETA = 7.5, 0.0, 15.0, -0.5  # APG with every knob on
SHAPES = {"SDXL latents": (2, 4, 128, 128), "Flux/SD3 tokens": (1, 4096, 64), "Wan video": (1, 16, 21, 60, 104)}
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class Timer:
    """Seconds per call of fn: CUDA events on a GPU (no host sync inside the timed loop), perf_counter on the CPU."""

    def __init__(self, device: torch.device, repeats: int, warmup: int = 3, samples: int = 5):
        self.device, self.repeats, self.warmup, self.samples = device, repeats, warmup, samples

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        samples = []
        for _ in range(self.samples):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.repeats):
                    fn()
                end.record()
                torch.cuda.synchronize(self.device)
                samples.append(start.elapsed_time(end) / 1e3 / self.repeats)
            else:
                start = time.perf_counter()
                for _ in range(self.repeats):
                    fn()
                samples.append((time.perf_counter() - start) / self.repeats)
        return statistics.median(samples)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def step_rows(device, timer, quick):
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    shapes = dict(list(SHAPES.items())[:2]) if quick and device.type == "cpu" else SHAPES
    compile_modes = [None] + (["default", "reduce-overhead"] if device.type == "cuda" else ["default"])
    if quick and device.type == "cpu":
        compile_modes = [None]  # inductor's C++ build takes minutes on a small CPU
    gen = torch.Generator().manual_seed(0)
    for label, shape in shapes.items():
        for dtype in DTYPES:
            cond = torch.randn(shape, generator=gen).to(device, dtype)
            uncond = (cond.float() + 0.5 * torch.randn(shape, generator=gen).to(device)).to(dtype)
            ours, cfg, buffer = apg.APG(W, eta=ETA, norm_threshold=R, momentum=BETA), apg.CFG(W), MomentumBuffer(BETA)
            stock = timer(lambda: uncond + W * (cond - uncond))
            case = f"{label} {list(shape)} {str(dtype).split('.')[-1]}"
            yield "step", case, "stock CFG line", stock, 1.0
            for name, fn in (("apg.CFG", lambda: cfg(cond, uncond)),
                             ("apg.APG", lambda: ours(cond, uncond)),
                             ("Diffusers normalized_guidance",
                              lambda: normalized_guidance(cond, uncond, W - 1, buffer, ETA, R, True))):
                seconds = timer(fn)
                yield "step", case, name, seconds, seconds / stock
            if device.type == "cuda":
                from apg import _triton

                triton_state = [None]

                def triton_step():
                    triton_state[0] = _triton.apg(cond, uncond, triton_state[0], W, ETA, R, BETA)[1]

                seconds = timer(triton_step)
                yield "step", case, "apg.APG, Triton (APG_CUDA_KERNEL=triton)", seconds, seconds / stock
            for mode in compile_modes[1:]:
                torch._dynamo.reset()
                compiled = torch.compile(lambda c, u, run: apg_torch(c, u, run, W, ETA, R, BETA), mode=mode)
                running = [compiled(cond, uncond, None)[1]]

                def step():
                    running[0] = compiled(cond, uncond, running[0])[1]

                seconds = timer(step)
                yield "step", case, f"apg_torch, torch.compile {mode}", seconds, seconds / stock


def _guided_pair(pipe, call, scale_arg, guidance):
    def stock():
        return pipe(**call, **{scale_arg: W}, generator=torch.Generator().manual_seed(0))

    def guided():
        with apg.guide(pipe, guidance):
            return pipe(**call, generator=torch.Generator().manual_seed(0))

    return stock, guided


def _tiny_sd(device, steps):
    from tiny_pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline("dpmpp_2m", unet_channels=(32, 64)).to(device)
    call = dict(prompt="a photo of a cat", negative_prompt="a blue car", height=64, width=64,
                num_inference_steps=steps, output_type="latent")
    return pipe, call


def sync_rows(device):
    if device.type != "cuda":
        yield "sync", "apg's step under set_sync_debug_mode('error')", "skipped: needs CUDA", None, None
        return
    from tiny_pipelines import FAMILIES

    from apg import _run

    inner = _run._GuidedRun.guide_output

    def strict(self, *args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return inner(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    for family, scheduler in (("sd", "euler"), ("sd", "dpmpp_2m"), ("sd", "ddim"), ("flux", "flow_euler")):
        build, scale_arg, kwargs = FAMILIES[family]
        pipe = build(scheduler=scheduler).to(device)
        _run._GuidedRun.guide_output = strict
        try:
            with apg.guide(pipe, apg.APG(W, eta=ETA, norm_threshold=R, momentum=BETA)):
                pipe(**kwargs, num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0))
            verdict = "no host sync"
        except RuntimeError as error:
            verdict = f"SYNC: {str(error).splitlines()[0][:80]}"
        finally:
            _run._GuidedRun.guide_output = inner
        yield "sync", f"{family}, {scheduler}, 4 steps", verdict, None, None


def pipeline_rows(device, quick):
    steps = 2 if quick else 25
    pipe, call = _tiny_sd(device, steps)
    builtin = apg.load_builtin().to(device)
    builtin.set_progress_bar_config(disable=True)
    builtin_call = dict(class_labels=["cat", "ship"] * 8, num_inference_steps=steps, output_type="pt")
    cases = [(f"tiny SD-shaped UNet, 32x32 latents, {steps} steps", pipe, call, "guidance_scale"),
             (f"built-in model, 16 images, {steps} steps", builtin, builtin_call, "guidance_scale")]
    timer = Timer(device, 1, warmup=1, samples=1 if quick else 5)
    for case, p, c, scale_arg in cases:
        stock, guided = _guided_pair(p, c, scale_arg, apg.APG.from_preset("sd21", W))
        t_stock, t_guided = timer(stock), timer(guided)
        yield "pipeline", case, "stock CFG", t_stock, 1.0
        yield "pipeline", case, "apg.guide(APG)", t_guided, t_guided / t_stock


def skip_rows(device, quick):
    from bench_skipping import variants
    from tiny_pipelines import count_rows, tiny_sd_pipeline
    from tiny_video import tiny_wan_pipeline, wan_call

    steps, side = (2, 64) if quick else (20, 256)
    sd = tiny_sd_pipeline("dpmpp_2m", unet_channels=(32, 64) if quick else (128, 256)).to(device)
    sd_call = dict(prompt="a photo of a cat", negative_prompt="a blue car", height=side, width=side,
                   num_inference_steps=steps, output_type="latent")
    wan = tiny_wan_pipeline(heads=8, layers=2 if quick else 8).to(device)
    wan_call_ = dict(wan_call(), height=side // 2, width=side // 2, num_frames=9 if quick else 17,
                     num_inference_steps=steps, output_type="latent")
    timer = Timer(device, 1, warmup=1, samples=1 if quick else 5)
    cases = [(f"SD-shaped UNet, {side // 2}x{side // 2} latents, {steps} steps", sd, sd_call, 7.5),
             (f"Wan, {side // 16}x{side // 16} latents, {steps} steps", wan, wan_call_, 5.0)]
    for case, pipe, call, scale in cases:
        table, predicted, _ = variants(pipe, call, scale, apg.PRESETS["sdxl"])
        rows = count_rows(pipe)
        (base, _), (within, _) = list(table.values())[:2]

        def run(guidance):
            rows.clear()
            with apg.guide(pipe, guidance):
                pipe(**call, generator=torch.Generator().manual_seed(0))
            return sum(rows)

        t_base, t_within = timer(lambda: run(base)), timer(lambda: run(within))
        ratio = run(within) / run(base)
        yield "skip", case, "APG, no interval", t_base, 1.0
        yield "skip", case, f"interval: rows {ratio:.2f} (predicted {predicted:.2f})", t_within, t_within / t_base


def generate_rows(device, quick):
    from bench_evaluation import random_inception_weights

    from apg.evaluation import extract_features, generate, open_images

    pipe = apg.load_builtin().to(device)
    pipe.set_progress_bar_config(disable=True)
    steps = 2 if quick else 32
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 16, 64):
            images = batch if quick else max(64, 4 * batch)
            start = time.perf_counter()
            generate(pipe, apg.APG(4.0, norm_threshold=2.5), Path(tmp) / f"b{batch}", num_images=images,
                     classes=["cat", "ship"], batch_size=batch, num_inference_steps=steps, model="builtin",
                     progress=False)
            seconds = time.perf_counter() - start
            yield "generate", f"built-in model, batch {batch}, {steps} steps", f"{images / seconds:.1f} images/s", None, None
        weights = Path(tmp) / "inception-random.pth"
        random_inception_weights(weights)
        source = open_images(Path(tmp) / ("b16" if quick else "b64"))  # the PNGs just generated
        start = time.perf_counter()
        extract_features(source, "inception-v3-compat", ["2048"], feature_weights=weights, batch_size=64,
                         progress=False)
        rate = len(source) / (time.perf_counter() - start)
        yield "features", f"InceptionV3 299x299, {len(source)} images", f"{rate:.1f} images/s", None, None


def memory_rows(device):
    if device.type != "cuda":
        yield "memory", "peak allocated", "skipped: needs CUDA", None, None
        return

    def peak(fn):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    pipe, call = _tiny_sd(device, 10)
    stock, guided = _guided_pair(pipe, call, "guidance_scale", apg.APG.from_preset("sd21", W))
    m_stock, m_guided = peak(stock), peak(guided)
    yield "memory", "tiny SD call, 10 steps", f"stock {m_stock / 2**20:.1f} MiB", None, None
    yield "memory", "tiny SD call, 10 steps", f"apg.guide {m_guided / 2**20:.1f} MiB", None, m_guided / m_stock
    shape = SHAPES["Wan video"]
    for dtype in (torch.bfloat16, torch.float32):
        cond = torch.randn(shape, device=device, dtype=dtype)
        uncond = cond + 0.5 * torch.randn_like(cond)
        ours = apg.APG(W, eta=ETA, norm_threshold=R, momentum=BETA)
        ours(cond, uncond)  # the momentum state exists before the measured step, as in a run
        m_stock = peak(lambda: uncond + W * (cond - uncond))
        m_apg = peak(lambda: ours(cond, uncond))
        case = f"one step, Wan {list(shape)} {str(dtype).split('.')[-1]}"
        yield "memory", case, f"stock {m_stock / 2**20:.1f} MiB, APG {m_apg / 2**20:.1f} MiB", None, m_apg / m_stock


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats and small runs (CI: about a minute)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    args = parser.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing measured. "
              "`--device cpu` runs the same kit on the CPU.")
        return 0
    try:
        device = torch.device(args.device or "cuda")
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device {device} but torch.cuda.is_available() is False; nothing measured.")
        return 0
    torch.manual_seed(0)
    diffusers.utils.logging.disable_progress_bar()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"gpu_check on {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"
          f"{' (--quick)' if args.quick else ''}; apg.APG with eta={ETA}, r={R}, beta={BETA}, w={W}")
    header = f"| {'check':8} | {'case':44} | {'method / result':36} | {'time':>11} | {'vs stock':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    timer = Timer(device, 5 if args.quick else 50, warmup=1 if args.quick else 3, samples=3 if args.quick else 5)
    sections = [step_rows(device, timer, args.quick), sync_rows(device), pipeline_rows(device, args.quick),
                skip_rows(device, args.quick), generate_rows(device, args.quick), memory_rows(device)]
    for rows in sections:
        for check, case, what, seconds, ratio in rows:
            time_cell = _ms(seconds) if seconds is not None else ""
            ratio_cell = f"{ratio:.2f}" if ratio is not None else ""
            print(f"| {check:8} | {case:44} | {what:36} | {time_cell:>11} | {ratio_cell:>8} |", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
