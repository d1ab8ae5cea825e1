"""One guided step in the rule's space, shared by apg.guide's two capture paths (denoiser hook, guider slot).

x0 = a * sample + b * output with the scheduler's own coefficients (apg.schedulers.step_coefficients); the guided
x0 maps back to the model's parameterization as out_uncond + (x0_guided - x0_uncond) / b, exact while b != 0.
"""

from __future__ import annotations

import torch

from .schedulers import noise_level, step_coefficients

__all__ = ["guided_output"]


def guided_output(guidance, space, scheduler, family, timestep, sample, pred_cond, pred_uncond, step):
    """Guided model output for scheduler.step.

    pred_cond, pred_uncond: [n, C, ...] as the pipeline steps them; sample: [>= n, C, ...], the latents.
    """
    if space == "raw":
        return guidance(pred_cond, pred_uncond, sigma=noise_level(scheduler, family, timestep), step=step)
    a, b, sigma = step_coefficients(scheduler, family, timestep)  # one read of the scheduler's state
    if b == 0:
        raise RuntimeError(f"x0 does not depend on the model output at timestep {timestep} (noise level 0)")
    # At least float32: at high noise a * sample and b * output nearly cancel, too close for half precision.
    dtype = torch.promote_types(pred_cond.dtype, torch.float32)
    scaled_sample = sample[: pred_cond.shape[0]].to(dtype) * a  # x0 = a * sample + b * output, [n, C, ...]
    denoised_cond = torch.add(scaled_sample, pred_cond.to(dtype), alpha=b)
    denoised_uncond = torch.add(scaled_sample, pred_uncond.to(dtype), alpha=b)
    denoised = guidance(denoised_cond, denoised_uncond, sigma=sigma, step=step)
    return torch.add(pred_uncond.to(dtype), denoised - denoised_uncond, alpha=1.0 / b).to(pred_cond.dtype)

