"""Algorithm 1 as two Triton kernels for CUDA tensors: the step in two launches instead of ~15 torch ops.

On a GPU the torch formulation (apg.guidance.apg_torch) is a dozen small kernels, most of them on [B] scalars, so at
latent sizes the step is bound by launches, not memory. Here pass 1 forms diff (with the momentum update, in
place on the float32 state) and writes per-block partial sums of ||diff||^2, <diff, D_c> and ||D_c||^2; pass 2
sums its sample's partials in a fixed order (deterministic, no atomics), forms the per-sample coefficients and
writes `a * D_c + c * diff`, the same closed form as `apg_step`. float16/bfloat16/float32 in, float32 arithmetic.

Opt-in until a GPU measures it (benchmarks/gpu_check.py): APG_CUDA_KERNEL=triton|torch (default torch). Tests
run the kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import functools
import os

import torch

_MODES = ("torch", "triton")
SERVED = (torch.float16, torch.bfloat16, torch.float32)
BLOCK = 2048  # elements per program; [B, ceil(N / BLOCK)] programs per pass
PARTIALS = 128  # partial sums pass 2 reads per loop iteration


def mode() -> str:
    """APG_CUDA_KERNEL, validated: "torch" (default) or "triton"."""
    value = os.environ.get("APG_CUDA_KERNEL", "torch").strip().lower()
    if value not in _MODES:
        raise ValueError(f"APG_CUDA_KERNEL must be one of {list(_MODES)}, got {os.environ['APG_CUDA_KERNEL']!r}")
    return value


def wanted(x: torch.Tensor) -> bool:
    """Whether the Triton kernels should guide `x`: a CUDA tensor they serve, outside autograd and tracing."""
    return (x.is_cuda and x.dtype in SERVED and mode() == "triton"
            and not (x.requires_grad and torch.is_grad_enabled()) and not torch.compiler.is_compiling())


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def partial_sums(cond_ptr, uncond_ptr, running_ptr, partial_ptr, n, n_blocks, beta,
                     MOMENTUM: tl.constexpr, HAS_RUNNING: tl.constexpr, BLOCK: tl.constexpr):
        sample, block = tl.program_id(0), tl.program_id(1)
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        base = sample.to(tl.int64) * n
        cond = tl.load(cond_ptr + base + offsets, mask=mask, other=0.0).to(tl.float32)
        diff = cond - tl.load(uncond_ptr + base + offsets, mask=mask, other=0.0).to(tl.float32)
        if MOMENTUM:  # running <- diff + beta * running (Alg. 1, line 4), in place
            if HAS_RUNNING:
                diff += beta * tl.load(running_ptr + base + offsets, mask=mask, other=0.0)
            tl.store(running_ptr + base + offsets, diff, mask=mask)
        out = partial_ptr + (sample * n_blocks + block) * 3
        tl.store(out, tl.sum(diff * diff, axis=0))
        tl.store(out + 1, tl.sum(diff * cond, axis=0))
        tl.store(out + 2, tl.sum(cond * cond, axis=0))

    @triton.jit
    def guided_output(cond_ptr, uncond_ptr, running_ptr, partial_ptr, scale_ptr, out_ptr, n, n_blocks,
                      scale, eta, norm_threshold, MOMENTUM: tl.constexpr, PER_SAMPLE: tl.constexpr,
                      RESCALE: tl.constexpr, PROJECT: tl.constexpr, BLOCK: tl.constexpr,
                      PARTIALS: tl.constexpr):
        sample, block = tl.program_id(0), tl.program_id(1)
        diff_sq = tl.zeros([PARTIALS], tl.float32)
        dot = tl.zeros([PARTIALS], tl.float32)
        cond_sq = tl.zeros([PARTIALS], tl.float32)
        for start in range(0, n_blocks, PARTIALS):
            index = start + tl.arange(0, PARTIALS)
            row = partial_ptr + (sample * n_blocks + index) * 3
            keep = index < n_blocks
            diff_sq += tl.load(row, mask=keep, other=0.0)
            dot += tl.load(row + 1, mask=keep, other=0.0)
            cond_sq += tl.load(row + 2, mask=keep, other=0.0)
        w = tl.load(scale_ptr + sample) if PER_SAMPLE else scale
        c = w - 1.0  # coefficient of diff: (w - 1) * min(1, r / ||diff||) (Alg. 1, lines 5-8)
        if RESCALE:
            c = c * norm_threshold / tl.maximum(tl.sqrt(tl.sum(diff_sq, axis=0)), norm_threshold)
        a = 1.0  # coefficient of D_c: 1 - (1 - eta) * c * <diff, D_c> / ||D_c||^2; D_c = 0 gives 0, not 0/0
        if PROJECT:
            a = 1.0 - (1.0 - eta) * c * tl.sum(dot, axis=0) / tl.maximum(tl.sum(cond_sq, axis=0), 1.1754944e-38)
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        base = sample.to(tl.int64) * n
        cond = tl.load(cond_ptr + base + offsets, mask=mask, other=0.0).to(tl.float32)
        if MOMENTUM:
            diff = tl.load(running_ptr + base + offsets, mask=mask, other=0.0)
        else:
            diff = cond - tl.load(uncond_ptr + base + offsets, mask=mask, other=0.0).to(tl.float32)
        guided = a * cond + c * diff
        tl.store(out_ptr + base + offsets, guided.to(out_ptr.dtype.element_ty), mask=mask)

    return partial_sums, guided_output


def apg(pred_cond, pred_uncond, running, scale, eta, norm_threshold, momentum):
    """Algorithm 1 on [B, ...] tensors in one of SERVED; returns (guided, running) like apg_torch.

    scale: float or [B] float32 tensor on the inputs' device; running: None or the [B, ...] float32 state.
    """
    partial_sums, guided_output = _kernels()
    cond, uncond = pred_cond.contiguous(), pred_uncond.contiguous()
    batch = cond.shape[0]
    n = cond.numel() // batch
    n_blocks = -(-n // BLOCK)
    partials = torch.empty((batch, n_blocks, 3), dtype=torch.float32, device=cond.device)
    with_momentum = momentum != 0
    if with_momentum and running is None:
        state = torch.empty(cond.shape, dtype=torch.float32, device=cond.device)
    else:
        state = running
    per_sample = isinstance(scale, torch.Tensor)
    grid = (batch, n_blocks)
    partial_sums[grid](cond, uncond, state if with_momentum else cond, partials, n, n_blocks, float(momentum),
                       MOMENTUM=with_momentum, HAS_RUNNING=running is not None, BLOCK=BLOCK)
    out = torch.empty_like(cond)
    guided_output[grid](cond, uncond, state if with_momentum else cond, partials,
                        scale.to(torch.float32) if per_sample else partials, out, n, n_blocks,
                        0.0 if per_sample else float(scale), float(eta), float(norm_threshold),
                        MOMENTUM=with_momentum, PER_SAMPLE=per_sample, RESCALE=norm_threshold > 0,
                        PROJECT=eta != 1.0, BLOCK=BLOCK, PARTIALS=PARTIALS)
    return out, (state if with_momentum else running)
