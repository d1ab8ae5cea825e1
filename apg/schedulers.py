"""Denoised (x0) coefficients and EDM noise level per scheduler family: x0 = a * sample + b * model_output.

Each family yields the (alpha_t, sigma_t) of the evaluated model call, with sample = alpha_t * x0 + sigma_t * eps,
read from the scheduler's own state at that step; (a, b) and the noise level sigma_t / alpha_t both derive from
it, so the x0 here is the x0 the scheduler itself computes inside `step()`. `sample` is the latents passed to
`step()` (for Euler-type schedulers the unscaled latents, not the model's scaled input).

Schedulers that evaluate the model twice per step (Heun, KDPM2, DPM-Solver SDE, FlowMatch Heun) call `step()`
after each evaluation; each call gets the sigma that evaluation ran at. Options that only post-process x0
(`clip_sample`, `thresholding`) act on the guided x0, as they act on the stock CFG's.
"""

from __future__ import annotations

import math
import weakref

import diffusers
import torch

from .errors import UnsupportedError

__all__ = [
    "SUPPORTED_SCHEDULERS", "check_scheduler", "denoised_coefficients", "noise_level", "step_coefficients", "upcoming",
]

_EPS_V = ("epsilon", "v_prediction")
_EPS_V_SAMPLE = _EPS_V + ("sample",)
_ALL = _EPS_V_SAMPLE + ("flow_prediction",)
# scheduler class -> (family, prediction types its step() implements). Families, by where (alpha_t, sigma_t) live:
#   alphas_cumprod  alphas_cumprod[t] at the training timestep t (VP: alpha^2 + sigma^2 = 1)
#   karras_sigma    sigma of the evaluation, sample = x0 + sigma * eps (alpha = 1)
#   edm             as karras_sigma, x0 through EDM preconditioning (c_skip, c_out with sigma_data)
#   alpha_sigma     _sigma_to_alpha_sigma_t(sigmas[step_index]): VP, or flow with use_flow_sigmas
#   flow_match      s = sigmas[step_index], sample = (1 - s) * x0 + s * eps, the model predicts v = eps - x0
#                   (inverted and EDM-framed schedules: _flow_alpha_sigma)
# Keyed by class name and resolved only for a scheduler in use: a class the installed Diffusers lacks is unsupported.
_SUPPORTED = {
    "DDIMScheduler": ("alphas_cumprod", _EPS_V_SAMPLE),
    "DDPMScheduler": ("alphas_cumprod", _EPS_V_SAMPLE),
    "PNDMScheduler": ("alphas_cumprod", _EPS_V),
    "CogVideoXDDIMScheduler": ("alphas_cumprod", _EPS_V_SAMPLE),
    "CogVideoXDPMScheduler": ("alphas_cumprod", _EPS_V_SAMPLE),
    "EulerDiscreteScheduler": ("karras_sigma", _EPS_V_SAMPLE),
    "EulerAncestralDiscreteScheduler": ("karras_sigma", _EPS_V),
    "HeunDiscreteScheduler": ("karras_sigma", _EPS_V_SAMPLE),
    "LMSDiscreteScheduler": ("karras_sigma", _EPS_V_SAMPLE),
    "KDPM2DiscreteScheduler": ("karras_sigma", _EPS_V),
    "KDPM2AncestralDiscreteScheduler": ("karras_sigma", _EPS_V),
    "DPMSolverSDEScheduler": ("karras_sigma", _EPS_V),
    "EDMEulerScheduler": ("edm", _EPS_V),
    "EDMDPMSolverMultistepScheduler": ("edm", _EPS_V),
    "DPMSolverMultistepScheduler": ("alpha_sigma", _ALL),
    "DPMSolverSinglestepScheduler": ("alpha_sigma", _ALL),
    "UniPCMultistepScheduler": ("alpha_sigma", _ALL),
    "DEISMultistepScheduler": ("alpha_sigma", _ALL),
    "SASolverScheduler": ("alpha_sigma", _ALL),
    "FlowMatchEulerDiscreteScheduler": ("flow_match", ("flow",)),
    "FlowMatchHeunDiscreteScheduler": ("flow_match", ("flow",)),
    "FlowMatchLCMScheduler": ("flow_match", ("flow",)),
}
# The second evaluation of a two-stage step runs at a sigma between the step's ends (Heun and FlowMatch Heun
# interleave their sigmas, so sigmas[step_index] is already the one evaluated): the sigma its step() converts with.
_SECOND_STAGE_SIGMA = {
    "KDPM2DiscreteScheduler": lambda s: s.sigmas_interpol[s.step_index],
    "KDPM2AncestralDiscreteScheduler": lambda s: s.sigmas_interpol[s.step_index - 1],
    "DPMSolverSDEScheduler": lambda s: s.mid_point_sigma,  # sqrt(sigma * sigma_next), the log-midpoint
}

SUPPORTED_SCHEDULERS = {name: predictions for name, (_, predictions) in _SUPPORTED.items() if name in dir(diffusers)}


def _prediction_type(scheduler) -> str:
    return scheduler.config.get("prediction_type", "flow")  # FlowMatch schedulers predict velocity only


def check_scheduler(scheduler) -> str:
    """Family name of a supported scheduler; UnsupportedError (a ValueError) naming what is unsupported otherwise."""
    # Exact class: a subclass may change step(), and then these coefficients would be wrong without a word.
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS or type(scheduler) is not getattr(diffusers, name):
        raise UnsupportedError(
            f"scheduler {name} is not supported by apg; supported schedulers: {sorted(SUPPORTED_SCHEDULERS)}"
        )
    family, predictions = _SUPPORTED[name]
    prediction = _prediction_type(scheduler)
    if prediction not in predictions:
        raise UnsupportedError(
            f"prediction_type {prediction!r} of {name} is not supported; "
            f"supported with this scheduler: {list(predictions)}"
        )
    if _inverted(scheduler) and (name != "FlowMatchEulerDiscreteScheduler" or scheduler.config.stochastic_sampling):
        # Their step() writes x0 = sample - s * v, which is not the inverted frame's x0 (see _flow_alpha_sigma).
        raise UnsupportedError(
            f"{name} with invert_sigmas=True is not supported here: apg reads inverted sigmas only with "
            "FlowMatchEulerDiscreteScheduler's deterministic step (stochastic_sampling=False)"
        )
    if family == "alpha_sigma" and prediction in ("flow_prediction", "v_prediction"):
        # Their step() writes x0 = sample - sigmas[i] * v for flow and alpha_t * sample - sigma_t * v for v: each
        # is a consistent parameterization only on its own kind of sigmas.
        flow_sigmas = bool(scheduler.config.get("use_flow_sigmas", False))
        if flow_sigmas != (prediction == "flow_prediction"):
            raise UnsupportedError(
                f"prediction_type {prediction!r} of {name} with use_flow_sigmas={flow_sigmas} is not supported: "
                f"flow_prediction needs use_flow_sigmas=True, v_prediction needs use_flow_sigmas=False"
            )
    return family


# Device sigma tables (FlowMatch Euler keeps its sigmas on the sample's device) -> their CPU copy, made once per
# set_timesteps: reading an entry of a CUDA table as a float every step would be a host-device sync every step.
_HOST_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _on_host(table: torch.Tensor) -> torch.Tensor:
    if table.device.type == "cpu":
        return table
    host = _HOST_TABLES.get(table)
    if host is None:
        host = _HOST_TABLES[table] = table.cpu()
    return host


def _step_index(scheduler, timestep) -> int:
    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)  # what step() does first; some schedulers set it only there
    return scheduler.step_index


def _upcoming_index(scheduler) -> int:
    """Step index of the model evaluation about to run: the scheduler's own, else the one its first step() will set
    (begin_index: img2img's start; else that of the first timestep, where the pipeline's loop starts)."""
    if scheduler.step_index is not None:
        return scheduler.step_index
    if scheduler.begin_index is not None:
        return scheduler.begin_index
    return scheduler.index_for_timestep(scheduler.timesteps[0])


def current_sigma(scheduler) -> torch.Tensor:
    """The scheduler's sigma of the step about to be taken, as the entry of its table (a pipeline's `sigmas[i]`)."""
    return scheduler.sigmas[_upcoming_index(scheduler)]


def _evaluated_sigma(scheduler, index: int) -> float:
    """The sigma of the model evaluation at step index `index` (the second of a two-stage step: its own)."""
    second_stage = _SECOND_STAGE_SIGMA.get(type(scheduler).__name__)
    if second_stage is not None and not scheduler.state_in_first_order:
        return float(second_stage(scheduler))
    return float(_on_host(scheduler.sigmas)[index])


def _alpha_sigma(scheduler, family: str, timestep, index: int | None = None) -> tuple[float, float]:
    """(alpha_t, sigma_t) of the evaluated step, with sample = alpha_t * x0 + sigma_t * eps.

    `index`: the step index of the evaluation; None: the one this step() call follows (set from `timestep`).
    """
    if family == "alphas_cumprod":
        alpha_sq = float(scheduler.alphas_cumprod[int(timestep)])  # indexed by the training timestep
        return math.sqrt(alpha_sq), math.sqrt(1.0 - alpha_sq)
    index = _step_index(scheduler, timestep) if index is None else index
    if family == "alpha_sigma":
        alpha_t, sigma_t = scheduler._sigma_to_alpha_sigma_t(_on_host(scheduler.sigmas)[index])
        return float(alpha_t), float(sigma_t)
    sigma = _evaluated_sigma(scheduler, index)
    return _flow_alpha_sigma(scheduler, sigma) if family == "flow_match" else (1.0, sigma)  # karras_sigma, edm


def _inverted(scheduler) -> bool:
    return bool(scheduler.config.get("invert_sigmas", False))


def _flow_alpha_sigma(scheduler, s: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) at FlowMatch sigma s, in the frame the schedule implies.

    The Euler step, sample + (s' - s) v, lands on x0 at the schedule's end: s = 0, or s = 1 when inverted (Mochi:
    sample = s x0 + (1 - s) eps, v = x0 - eps). A schedule past s = 1 (Cosmos 2's Karras sigmas up to 80) cannot be
    the flow frame: it is the EDM frame sample = x0 + s eps, where the same step reads the same x0 = sample - s v.
    """
    if _inverted(scheduler):
        return s, 1.0 - s
    return (1.0, s) if float(_on_host(scheduler.sigmas)[0]) > 1.0 else (1.0 - s, s)


def _x0_coefficients(scheduler, family: str, alpha: float, sigma: float, timestep) -> tuple[float, float]:
    """(a, b) with x0 = a * sample + b * model_output, from the step's (alpha_t, sigma_t)."""
    prediction = _prediction_type(scheduler)
    if prediction == "sample":
        return 0.0, 1.0
    if family == "edm":  # D = c_skip * x + c_out * F (Karras et al. 2022, eq. 7); v flips the sign of c_out
        sigma_data = scheduler.config.sigma_data
        c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
        return sigma_data**2 / (sigma**2 + sigma_data**2), c_out if prediction == "epsilon" else -c_out
    if prediction == "epsilon":  # x0 = (x - sigma * eps) / alpha
        if alpha == 0:
            raise UnsupportedError(
                f"prediction_type 'epsilon' of {type(scheduler).__name__} has no x0 at timestep {timestep}: "
                "alpha_t = 0 (zero terminal SNR needs v_prediction)"
            )
        return 1.0 / alpha, -sigma / alpha
    if prediction == "v_prediction":  # x0 = alpha x - sigma v in the variance-preserving frame x / r
        r_sq = alpha**2 + sigma**2  # 1 for VP schedules, 1 + sigma^2 for sigma-space samples
        return alpha / r_sq, -sigma / math.sqrt(r_sq)
    # Flow, v = eps - x0: x0 = sample - s v, sigma_t = s in both frames of _flow_alpha_sigma; inverted, v = x0 - eps
    # and sigma_t = 1 - s.
    return 1.0, (sigma if _inverted(scheduler) else -sigma)


def _edm_sigma(alpha: float, sigma: float) -> float:
    return math.inf if alpha <= 0 else sigma / alpha


def denoised_coefficients(scheduler, family: str, timestep) -> tuple[float, float]:
    """(a, b) with x0 = a * sample + b * model_output at this step, as Python floats."""
    return _x0_coefficients(scheduler, family, *_alpha_sigma(scheduler, family, timestep), timestep)


def noise_level(scheduler, family: str, timestep) -> float:
    """EDM noise level sigma = sigma_t / alpha_t of the evaluated step (x_t = alpha_t x0 + sigma_t eps).

    One definition for every family, so a sigma interval carries over between models; +inf where alpha_t = 0
    (a flow schedule at s = 1, a zero-terminal-SNR schedule at its last timestep).
    """
    return _edm_sigma(*_alpha_sigma(scheduler, family, timestep))


def step_coefficients(scheduler, family: str, timestep) -> tuple[float, float, float]:
    """(a, b, noise level) of this step from one read of the scheduler's state: what x0-space guidance needs."""
    alpha, sigma = _alpha_sigma(scheduler, family, timestep)
    return (*_x0_coefficients(scheduler, family, alpha, sigma, timestep), _edm_sigma(alpha, sigma))


def upcoming(scheduler, family: str, model_timestep) -> tuple[float, float]:
    """(timestep, noise level) of the model evaluation about to run, read before it runs; no state is changed.

    Index-based families read the step index the coming step() will use (Heun-type second evaluations
    included). The alphas_cumprod family has no index: `model_timestep` is the timestep the denoiser is called
    with (a number or a tensor of equal entries), snapped to the nearest entry of the scheduler's timesteps.
    """
    if family == "alphas_cumprod":
        table = _on_host(scheduler.timesteps)
        given = float(torch.as_tensor(model_timestep).flatten()[0])
        timestep = float(table[(table.double() - given).abs().argmin()])
        return timestep, noise_level(scheduler, family, timestep)
    index = _upcoming_index(scheduler)
    return float(_on_host(scheduler.timesteps)[index]), _edm_sigma(*_alpha_sigma(scheduler, family, None, index))
