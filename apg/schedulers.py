"""Denoised (x0) coefficients per scheduler family: x0 = a * sample + b * model_output.

The coefficients come from each scheduler's own state at the evaluated step, so the x0 here is the x0 the
scheduler itself computes inside `step()`. `sample` is the latents passed to `step()` (for Euler-type
schedulers the unscaled latents, not the model's scaled input).
"""

from __future__ import annotations

import math

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

__all__ = ["SUPPORTED_SCHEDULERS", "check_scheduler", "denoised_coefficients", "noise_level"]

_EPS_V = ("epsilon", "v_prediction")
_EPS_V_SAMPLE = ("epsilon", "v_prediction", "sample")
# scheduler class -> (family, prediction types its step() implements)
_SUPPORTED = {
    DDIMScheduler: ("alphas_cumprod", _EPS_V_SAMPLE),
    DDPMScheduler: ("alphas_cumprod", _EPS_V_SAMPLE),
    PNDMScheduler: ("alphas_cumprod", _EPS_V),
    EulerDiscreteScheduler: ("karras_sigma", _EPS_V_SAMPLE),
    EulerAncestralDiscreteScheduler: ("karras_sigma", _EPS_V),
    HeunDiscreteScheduler: ("karras_sigma", _EPS_V_SAMPLE),
    LMSDiscreteScheduler: ("karras_sigma", _EPS_V_SAMPLE),
    DPMSolverMultistepScheduler: ("alpha_sigma", _EPS_V_SAMPLE + ("flow_prediction",)),
    UniPCMultistepScheduler: ("alpha_sigma", _EPS_V_SAMPLE + ("flow_prediction",)),
    FlowMatchEulerDiscreteScheduler: ("flow_match", ("flow",)),
}

SUPPORTED_SCHEDULERS = {cls.__name__: predictions for cls, (_, predictions) in _SUPPORTED.items()}


def _prediction_type(scheduler) -> str:
    return scheduler.config.get("prediction_type", "flow")  # FlowMatch schedulers predict velocity only


def check_scheduler(scheduler) -> str:
    """Family name of a supported scheduler; ValueError naming what is unsupported otherwise."""
    # Exact class: a subclass may change step(), and then these coefficients would be wrong without a word.
    if type(scheduler) not in _SUPPORTED:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} is not supported by apg; supported schedulers: "
            f"{sorted(SUPPORTED_SCHEDULERS)}"
        )
    family, predictions = _SUPPORTED[type(scheduler)]
    prediction = _prediction_type(scheduler)
    if prediction not in predictions:
        raise ValueError(
            f"prediction_type {prediction!r} of {type(scheduler).__name__} is not supported; "
            f"supported with this scheduler: {list(predictions)}"
        )
    return family


def _step_index(scheduler, timestep) -> int:
    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)  # what step() does first; some schedulers set it only there
    return scheduler.step_index


def denoised_coefficients(scheduler, family: str, timestep) -> tuple[float, float]:
    """(a, b) with x0 = a * sample + b * model_output at this step, as Python floats."""
    prediction = _prediction_type(scheduler)
    if prediction == "sample":
        return 0.0, 1.0
    if family == "alphas_cumprod":
        alpha_sq = float(scheduler.alphas_cumprod[int(timestep)])  # indexed by the training timestep
        alpha, sigma = math.sqrt(alpha_sq), math.sqrt(1.0 - alpha_sq)
    elif family == "karras_sigma":  # sample = x0 + sigma * eps
        sigma = float(scheduler.sigmas[_step_index(scheduler, timestep)])
        if prediction == "epsilon":
            return 1.0, -sigma
        return 1.0 / (sigma**2 + 1.0), -sigma / math.sqrt(sigma**2 + 1.0)  # v in the variance-preserving frame
    elif family == "alpha_sigma":
        alpha_t, sigma_t = scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas[_step_index(scheduler, timestep)])
        alpha, sigma = float(alpha_t), float(sigma_t)
    else:  # flow_match: sample = (1 - sigma) * x0 + sigma * noise, v = noise - x0
        return 1.0, -float(scheduler.sigmas[_step_index(scheduler, timestep)])
    if prediction == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    if prediction == "v_prediction":
        return alpha, -sigma
    return 1.0, -sigma  # flow_prediction


def noise_level(scheduler, family: str, timestep) -> float:
    """EDM noise level sigma = sigma_t / alpha_t of the evaluated step (x_t = alpha_t x0 + sigma_t eps).

    One definition for every family, so a sigma interval carries over between models; +inf where a flow
    schedule reaches s = 1 (pure noise).
    """
    if family == "alphas_cumprod":
        alpha_sq = float(scheduler.alphas_cumprod[int(timestep)])
        return math.sqrt((1.0 - alpha_sq) / alpha_sq)
    sigma = float(scheduler.sigmas[_step_index(scheduler, timestep)])
    if family == "karras_sigma":  # sample = x0 + sigma * eps: already the EDM sigma
        return sigma
    if family == "alpha_sigma":
        alpha_t, sigma_t = scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas[_step_index(scheduler, timestep)])
        alpha_t, sigma_t = float(alpha_t), float(sigma_t)
        return math.inf if alpha_t == 0 else sigma_t / alpha_t
    return math.inf if sigma >= 1.0 else sigma / (1.0 - sigma)  # flow_match: x_t = (1 - s) x0 + s eps
