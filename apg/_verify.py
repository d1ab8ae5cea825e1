"""Verify, at a guided call's first step with both passes, that the pipeline combines them as registered.

apg replaces what the pipeline hands `scheduler.step`. That is only right if the pipeline's own result is the
registered combination of the outputs apg captured: the plain CFG line at the weight apg gave the pipeline, then
the registered quirks. A class whose `__call__` differs (a subclass that swaps the halves, an unregistered
rescale, a future Diffusers release) raises here, before that step is taken, instead of being guided wrong.
"""

from __future__ import annotations

import torch

__all__ = ["check_combination"]

_ROUNDING = 4  # units of the dtype's epsilon: the pipeline's three-op line and our own recomputation of it


def _norm(x) -> float:
    return float(torch.linalg.vector_norm(x))


def check_combination(name, stepped, pred_cond, pred_uncond, weight, after, computed_in=torch.float32):
    """RuntimeError unless `stepped` is `after(u + weight (c - u), c)` within the rounding of the pipeline's dtypes.

    stepped: what the pipeline hands scheduler.step, [n, ...]; pred_cond, pred_uncond: the captured outputs as
    stepped, [n', ...]; after(guided, pred_cond): the registered post-processing; computed_in: the dtype the
    denoiser returned, in which the pipeline may have run its line before casting (bfloat16 under float32
    latents). Shapes that do not match are left to the caller's own shape check.
    """
    dtype = torch.promote_types(stepped.dtype, torch.float32)
    # float32's own reductions (norms, std) round too
    eps = max(torch.finfo(stepped.dtype).eps, torch.finfo(computed_in).eps, 1e-6)
    c, u, got = pred_cond.to(dtype), pred_uncond.to(dtype), stepped.to(dtype)
    expected = after(u + weight * (c - u), c)
    if expected.shape != got.shape:
        return
    error = _norm(got - expected)
    if error <= _ROUNDING * eps * (_norm(got) + abs(weight) * _norm(c - u)):
        return
    raise RuntimeError(
        f"{name}: at its first guided step the pipeline stepped a prediction that is not its registered CFG "
        f"combination of the captured outputs at weight {weight:g}: {_diagnosis(got, c, u, weight, after, error)}. "
        "apg would guide this class wrong, so the step is not taken; check its registration (apg.register_pipeline, "
        "apg.quirks) against its __call__"
    )


def _diagnosis(got, c, u, weight, after, error) -> str:
    """What differs, in words: the halves' order, the weight, or an unregistered rescale."""
    swapped = after(c + weight * (u - c), u)
    if swapped.shape == got.shape and _norm(got - swapped) <= error * 1e-3:
        return "the halves are the other way round (the batch order is not the registered one)"
    diff = c - u
    fitted = float((got - u).flatten().double() @ diff.flatten().double()) / max(_norm(diff) ** 2, 1e-30)
    if got.shape == u.shape and _norm(got - (u + fitted * diff)) <= error * 1e-3:
        return f"it combines at weight {fitted:.4g}, not {weight:g} (the scale means something else)"
    expected = after(u + weight * diff, c)
    return (f"relative difference {error / max(_norm(expected), 1e-30):.3g}, norm ratio "
            f"{_norm(got) / max(_norm(expected), 1e-30):.4g} (a rescale or post-processing that is not registered)")
