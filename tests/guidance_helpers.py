"""Shared by the guidance tests: an independent float64 Algorithm 1, test inputs, and switching between the
fused CPU kernel and the torch ops inside one test process."""

import os
import shutil

import pytest
import devices
import torch

from apg import _fused


def use_implementation(name, monkeypatch):
    """APG_KERNEL=name with apg._fused's once-per-process state cleared; skips "fused" without a C compiler."""
    if name == "fused" and shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler, so no fused kernel")
    monkeypatch.setenv("APG_KERNEL", name)
    monkeypatch.setattr(_fused, "_state", {})
    _fused.functions()  # "fused" raises here if the kernel cannot be built
    return name


def reference(conds, unconds, w, eta=0.0, r=0.0, beta=0.0):
    """Algorithm 1 step by step in float64, one sample at a time, over a list of steps."""
    outs = []
    running = None
    for cond, uncond in zip(conds, unconds):
        cond, uncond = cond.double(), uncond.double()
        out = torch.empty_like(cond)
        if running is None:
            running = torch.zeros_like(cond)
        for i in range(cond.shape[0]):
            wi = float(w[i]) if isinstance(w, (list, torch.Tensor)) else w
            diff = cond[i] - uncond[i]
            if beta != 0:
                running[i] = diff + beta * running[i]
                diff = running[i].clone()
            if r > 0:
                norm = diff.norm().item()
                diff = diff * min(1.0, r / norm) if norm > 0 else diff
            c = cond[i]
            par = (diff * c).sum() / (c * c).sum() * c if (c * c).sum() > 0 else torch.zeros_like(c)
            orth = diff - par
            out[i] = c + (wi - 1) * (orth + eta * par)
        outs.append(out)
    return outs


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def pairs(shape, steps=1, seed=0, dtype=torch.float32, device=None):
    """`steps` (cond, uncond) pairs, on the test device by default; the same values on every device."""
    device = devices.current if device is None else device
    gen = torch.Generator().manual_seed(seed)
    conds = [torch.randn(shape, generator=gen).to(device, dtype) for _ in range(steps)]
    unconds = [c + 0.3 * torch.randn(shape, generator=gen).to(device, dtype) for c in conds]
    return conds, unconds
