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
    pred_uncond None: the rule needs none at this step (apg/_skip.py skipped it): guidance.cond_only, and the
    map back is anchored at the cond prediction, out_cond + (x0_guided - x0_cond) / b.
    """
    def rule(cond, uncond, sigma):
        if uncond is None:
            return guidance.cond_only(cond, sigma=sigma, step=step)
        return guidance(cond, uncond, sigma=sigma, step=step)

    if space == "raw":
        return rule(pred_cond, pred_uncond, noise_level(scheduler, family, timestep))
    a, b, sigma = step_coefficients(scheduler, family, timestep)  # one read of the scheduler's state
    if b == 0:
        raise RuntimeError(f"x0 does not depend on the model output at timestep {timestep} (noise level 0)")
    # At least float32: at high noise a * sample and b * output nearly cancel, too close for half precision.
    dtype = torch.promote_types(pred_cond.dtype, torch.float32)
    scaled_sample = sample[: pred_cond.shape[0]].to(dtype) * a  # x0 = a * sample + b * output, [n, C, ...]
    denoised_cond = torch.add(scaled_sample, pred_cond.to(dtype), alpha=b)
    anchor = pred_cond if pred_uncond is None else pred_uncond
    denoised_anchor = denoised_cond if pred_uncond is None else torch.add(scaled_sample, anchor.to(dtype), alpha=b)
    denoised = rule(denoised_cond, None if pred_uncond is None else denoised_anchor, sigma)
    return torch.add(anchor.to(dtype), denoised - denoised_anchor, alpha=1.0 / b).to(pred_cond.dtype)
