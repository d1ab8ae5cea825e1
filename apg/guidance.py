"""Guidance rules: CFG, APG and momentum CFG on denoised (x0) predictions, CFG-Zero* on raw ones.

Sadat, Hilliges, Weber, "Eliminating Oversaturation and Artifacts of High Guidance Scales in
Diffusion Models", ICLR 2025, arXiv 2410.02416, Algorithm 1; Fan et al., "CFG-Zero*: Improved
Classifier-Free Guidance for Flow Matching Models", arXiv 2503.18886; guidance in a limited interval of
noise levels: Kynkaanniemi et al., NeurIPS 2024, arXiv 2404.07724. Pure torch: no Diffusers import.

Every rule is called once per sampling step, `g(pred_cond, pred_uncond, sigma=..., step=...)`, with the
step context: sigma the EDM noise level of the step, step its 0-based index.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch

from . import _fused, _triton
from .errors import InputError, InputTypeError

__all__ = [
    "Guidance", "APG", "MomentumCFG", "CFG", "CFGZeroStar", "Param", "SCALE", "METHODS", "register_method",
    "PRESETS", "INTERVALS", "apg_step", "apg_torch", "cfg_zero_star", "in_interval",
]

# The paper's per-model settings (w is chosen per experiment, so presets fix eta, r and beta only).
# Source for all three: the paper's implementation details (arXiv 2410.02416, appendix), as reported by
# secondary sources quoted in the project's issue #2; the paper's own code was not available to check them.
PRESETS: dict[str, dict[str, float]] = {
    "sdxl": {"eta": 0.0, "norm_threshold": 15.0, "momentum": -0.5},  # Stable Diffusion XL
    "sd21": {"eta": 0.0, "norm_threshold": 7.5, "momentum": -0.75},  # Stable Diffusion 2.1
    "edm2-s": {"eta": 0.0, "norm_threshold": 2.5, "momentum": -0.75},  # EDM2-S, ImageNet-512
}

# Sigma intervals (low, high] the literature reports, on the EDM noise level sigma = sigma_t / alpha_t.
INTERVALS: dict[str, tuple[float, float]] = {
    # Kynkaanniemi et al., NeurIPS 2024 (arXiv 2404.07724): Stable Diffusion XL, guidance for sigma in (0.28, 5.42].
    "sdxl": (0.28, 5.42),
}

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the arithmetic, the momentum state and per-sample scales: float32 for 16-bit inputs."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def apg_step(pred_cond, diff, scale, eta, norm_threshold):
    """D = D_c + (w - 1) (D_orth + eta D_par) with diff rescaled to norm <= r (Alg. 1, lines 5-8).

    pred_cond, diff: [B, ...] in one float dtype, x0 space. scale: float or [B] tensor.
    Returns a * pred_cond + c * diff with per-sample scalars a and c, so the full-size work is two
    reductions and one fused output; no [B, ...] intermediate is materialised for par or orth.
    Out of place except on the fresh output, so autograd can differentiate through it.
    """
    per_sample = (-1,) + (1,) * (pred_cond.ndim - 1)
    dims = tuple(range(1, pred_cond.ndim))
    c = scale - 1.0  # coefficient of diff: (w - 1) * min(1, r / ||diff||) = (w - 1) * r / max(||diff||, r)
    if norm_threshold > 0:
        c = c * norm_threshold / torch.linalg.vector_norm(diff, dim=dims).clamp(min=norm_threshold)  # [B]
    if eta == 1.0:
        if isinstance(c, torch.Tensor):
            return torch.addcmul(pred_cond, diff, c.view(per_sample))
        return torch.add(pred_cond, diff, alpha=c)
    # vecdot, not bmm/einsum: a [1, N] x [N, 1] matmul is ~10x slower on the CPU.
    dot = torch.linalg.vecdot(pred_cond.flatten(1), diff.flatten(1))  # <diff, D_c>, [B]
    cond_sq = torch.linalg.vector_norm(pred_cond, dim=dims).square()  # ||D_c||^2, [B]
    # D_c = 0 gives dot = 0, so the parallel part is 0 rather than 0/0.
    ratio = dot / cond_sq.clamp(min=torch.finfo(cond_sq.dtype).tiny)
    a = 1.0 - (1.0 - eta) * c * ratio  # coefficient of pred_cond
    guided = pred_cond * a.view(per_sample)  # the one full-size allocation of the output
    if not isinstance(c, torch.Tensor):
        return guided.add_(diff, alpha=c)
    return guided.addcmul_(diff, c.view(per_sample))


def momentum_update(diff, running, beta):
    """running <- diff + beta * running (Alg. 1, line 4); None starts at 0."""
    return diff if running is None else torch.add(diff, running, alpha=beta)


def apg_torch(pred_cond, pred_uncond, running, scale, eta, norm_threshold, momentum):
    """Algorithm 1 in torch ops, for any device and for autograd; returns (guided, running).

    float16/bfloat16 are computed in float32 (momentum state too), never float64; running=None starts at 0.
    """
    dtype = pred_cond.dtype
    pred_cond, pred_uncond = pred_cond.to(compute_dtype(dtype)), pred_uncond.to(compute_dtype(dtype))
    diff = pred_cond - pred_uncond  # [B, ...], x0 space
    if momentum != 0:
        running = diff = momentum_update(diff, running, momentum)
    return apg_step(pred_cond, diff, scale, eta, norm_threshold).to(dtype), running


def cfg_zero_star(pred_cond, pred_uncond, scale):
    """alpha u + w (c - alpha u), alpha = <c, u> / ||u||^2 per sample (CFG-Zero*, arXiv 2503.18886).

    pred_cond, pred_uncond: [B, ...], raw (velocity) space. scale: float or [B] tensor in the compute dtype.
    The 1e-8 in the denominator is the paper's code (and Diffusers'): u = 0 gives alpha = 0, not 0/0.
    """
    dtype = pred_cond.dtype
    per_sample = (-1,) + (1,) * (pred_cond.ndim - 1)
    cond, uncond = pred_cond.to(compute_dtype(dtype)), pred_uncond.to(compute_dtype(dtype))
    dot = torch.linalg.vecdot(cond.flatten(1), uncond.flatten(1))  # <c, u>, [B]
    alpha = dot / (torch.linalg.vector_norm(uncond.flatten(1), dim=1).square() + 1e-8)  # [B]
    scaled_uncond = uncond * alpha.view(per_sample)
    weight = scale.view(per_sample) if isinstance(scale, torch.Tensor) else scale
    return torch.lerp(scaled_uncond, cond, weight).to(dtype)


def in_interval(sigma: float, interval: tuple[float, float]) -> bool:
    """Whether guidance applies at noise level sigma: low < sigma <= high (Kynkaanniemi et al. 2024)."""
    low, high = interval
    return low < sigma <= high


@dataclass(frozen=True)
class Param:
    """One constructor knob of a guidance class; every UI derives its widget and limits from it."""

    name: str  # constructor keyword
    default: float | int
    low: float  # inclusive
    high: float  # inclusive; math.inf: none
    help: str  # one line, for --help and tooltips
    kind: type = float  # float or int

    def validate(self, value):
        """value as `kind` within [low, high]; TypeError or ValueError naming the parameter and the value."""
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputTypeError(f"{self.name} must be an integer, got {value!r} ({type(value).__name__})")
            value = int(value)
        else:
            value = _real(self.name, value)
        if not self.low <= value <= self.high:
            raise InputError(f"{self.name} must be {self.bounds()}, got {value!r}")
        return value

    def bounds(self) -> str:
        """The allowed range in words: '>= 0' or 'in [0, 1]'."""
        low, high = (int(b) if self.kind is int and math.isfinite(b) else b for b in (self.low, self.high))
        return f">= {low}" if high == math.inf else f"in [{low}, {high}]"


SCALE = Param("guidance_scale", 7.5, 0.0, math.inf,
              "guidance scale w: 0 = the unconditional model, 1 = the conditional one, > 1 guides")
_ETA = Param("eta", 0.0, 0.0, 1.0, "weight of the parallel component (0: the paper's APG, 1: no projection)")
_NORM_THRESHOLD = Param("norm_threshold", 0.0, 0.0, math.inf, "rescaling radius r of the update (0: off)")
# |beta| > 1 makes the running average diverge.
_MOMENTUM = Param("momentum", -0.5, -1.0, 1.0, "momentum beta of the running difference (< 0: reverse; 0: off)")
_ZERO_INIT_STEPS = Param("zero_init_steps", 1, 0, math.inf, "leading steps whose output is zero (CFG-Zero*)", int)


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value!r}")
    return float(value)


def _scale(value):
    if not isinstance(value, torch.Tensor):
        return SCALE.validate(value)
    if value.ndim != 1 or value.numel() == 0 or not value.dtype.is_floating_point:
        raise InputError(
            "guidance_scale as a tensor must be 1-D floating point with one scale per sample, "
            f"got shape {tuple(value.shape)} and dtype {value.dtype}"
        )
    if not torch.isfinite(value).all():
        raise InputError(f"guidance_scale must be finite, got {value.tolist()}")
    if (value < SCALE.low).any():
        raise InputError(f"guidance_scale must be {SCALE.bounds()}, got {value.tolist()}")
    return value.detach().to("cpu", torch.float64).clone()


def _interval(value):
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        low, high = value
    except (TypeError, ValueError):
        raise InputTypeError(f"interval must be None or a pair (sigma_low, sigma_high), got {value!r}") from None
    for x in (low, high):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise InputTypeError(f"interval bounds must be real numbers, got {value!r}")
    if not (math.isfinite(low) and 0 <= low < high):  # NaN fails every comparison
        raise InputError(f"interval must satisfy 0 <= sigma_low < sigma_high (high may be inf), got {value!r}")
    return float(low), float(high)


def _sigma(sigma):
    if sigma is None:
        return None
    if isinstance(sigma, torch.Tensor) and sigma.numel() == 1 and sigma.dtype.is_floating_point:
        sigma = sigma.item()  # an entry of a scheduler's table
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be a real number (the EDM noise level) or None, got {sigma!r}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 (inf allowed), got {sigma!r}")
    return float(sigma)


def _step(step):
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an integer (the 0-based step index) or None, got {step!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}")
    return int(step)


class Guidance:
    """Algorithm 1 with all its knobs; call it once per sampling step on x0 predictions.

    guided = g(pred_cond, pred_uncond, sigma=None, step=None)   # [B, ...] each, same shape, dtype, device
    g.reset()                                                   # clear the momentum state before a new run

    With `interval=(low, high)` the rule applies only where low < sigma <= high; elsewhere the result is
    pred_cond (guidance weight 1) and the momentum state does not advance.
    """

    label = "Guidance"  # display name
    space = "x0"  # where apg.guide applies the rule: "x0" (denoised) or "raw" (the model's own output)
    parameters: tuple[Param, ...] = (_ETA, _NORM_THRESHOLD, dataclasses.replace(_MOMENTUM, default=0.0))
    _registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Guidance._registry[cls.__name__] = cls

    def __init__(self, guidance_scale, *, eta=0.0, norm_threshold=0.0, momentum=0.0, interval=None):
        self.guidance_scale = _scale(guidance_scale)
        self.eta = _ETA.validate(eta)
        self.norm_threshold = _NORM_THRESHOLD.validate(norm_threshold)
        self.momentum = _MOMENTUM.validate(momentum)
        self.interval = _interval(interval)
        self._running = None  # momentum buffer: [B, ...] in the compute dtype, owned by one run
        self._scale_cache = None  # (device, dtype, tensor) for a per-sample scale

    def reset(self):
        """Forget the momentum state; call between sampling runs."""
        self._running = None

    def __call__(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor, *, sigma: float | None = None,
                 step: int | None = None) -> torch.Tensor:
        self._check(pred_cond, pred_uncond)
        sigma, step = _sigma(sigma), _step(step)
        if self.interval is not None:
            if sigma is None:
                raise ValueError(f"sigma=None, but {self!r} has an interval: pass sigma, the step's noise level")
            if not in_interval(sigma, self.interval):
                return self._outside(pred_cond, step)
        return self._guide(pred_cond, pred_uncond, step)

    def _outside(self, pred_cond, step):
        """Outside the interval: guidance weight 1, so pred_cond; the momentum state does not advance."""
        return pred_cond.clone()

    def _guide(self, pred_cond, pred_uncond, step):
        scale = self._scale_on(pred_cond)
        if self.momentum == 0 and self.norm_threshold == 0 and self.eta == 1:
            # Plain CFG: pred_uncond + w (pred_cond - pred_uncond) in one fused kernel.
            weight = scale if not isinstance(scale, torch.Tensor) else scale.view((-1,) + (1,) * (pred_cond.ndim - 1))
            return torch.lerp(pred_uncond, pred_cond, weight)
        knobs = (scale, self.eta, self.norm_threshold, self.momentum)
        kernel = _fused.kernel(pred_cond)
        if kernel is not None:  # CPU: two memory passes in C instead of ~8 torch ops (apg/_fused.py)
            guided, self._running = _fused.apg(kernel, pred_cond, pred_uncond, self._running, *knobs)
        elif _triton.wanted(pred_cond):  # CUDA, opt-in: two Triton launches instead of ~15 (apg/_triton.py)
            guided, self._running = _triton.apg(pred_cond, pred_uncond, self._running, *knobs)
        else:
            guided, self._running = apg_torch(pred_cond, pred_uncond, self._running, *knobs)
        return guided
    def _check(self, pred_cond, pred_uncond):
        for name, x in (("pred_cond", pred_cond), ("pred_uncond", pred_uncond)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if not x.dtype.is_floating_point:
                raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
            if x.ndim < 2:
                raise ValueError(f"{name} must be batch-first with ndim >= 2, got shape {tuple(x.shape)}")
        if pred_cond.shape != pred_uncond.shape:
            raise ValueError(f"pred_cond shape {tuple(pred_cond.shape)} != pred_uncond shape {tuple(pred_uncond.shape)}")
        if pred_cond.dtype != pred_uncond.dtype:
            raise TypeError(f"pred_cond dtype {pred_cond.dtype} != pred_uncond dtype {pred_uncond.dtype}")
        if pred_cond.device != pred_uncond.device:
            raise ValueError(f"pred_cond device {pred_cond.device} != pred_uncond device {pred_uncond.device}")
        running = self._running
        if running is not None and (running.shape, running.device, running.dtype) != (
            pred_cond.shape, pred_cond.device, compute_dtype(pred_cond.dtype)
        ):
            raise ValueError(
                f"momentum state holds shape {tuple(running.shape)}, {running.dtype} on {running.device} from "
                f"earlier steps, but pred_cond has shape {tuple(pred_cond.shape)}, {pred_cond.dtype} on "
                f"{pred_cond.device}; call reset() between runs"
            )

    def _scale_on(self, like):
        scale = self.guidance_scale
        if not isinstance(scale, torch.Tensor):
            return scale
        if scale.numel() != like.shape[0]:
            raise ValueError(
                f"guidance_scale has {scale.numel()} per-sample values {scale.tolist()}, "
                f"but the batch has {like.shape[0]} samples"
            )
        dtype = compute_dtype(like.dtype)
        cached = self._scale_cache
        if cached is None or cached[0] != like.device or cached[1] != dtype:
            cached = self._scale_cache = (like.device, dtype, scale.to(like.device, dtype))
        return cached[2]

    # -- config -------------------------------------------------------------------------------
    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return ("guidance_scale", *(p.name for p in cls.parameters))

    def to_dict(self) -> dict:
        """JSON-able config: {"type": class name, parameters..., "interval" when set}."""
        out = {"type": type(self).__name__}
        for name in self._names():
            value = getattr(self, name)
            out[name] = value.tolist() if isinstance(value, torch.Tensor) else value
        if self.interval is not None:
            out["interval"] = list(self.interval)
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "Guidance":
        """Inverse of to_dict; on Guidance itself the "type" key picks the class."""
        if not isinstance(config, dict) or "type" not in config:
            raise InputError(f"config must be a dict with a 'type' key, got {config!r}")
        target = Guidance._registry.get(config["type"])
        if target is None or not issubclass(target, cls):
            known = sorted(k for k, v in Guidance._registry.items() if issubclass(v, cls))
            raise InputError(f"config type {config['type']!r} is not one of {known}")
        params = {k: v for k, v in config.items() if k != "type"}
        expected = [*target._names(), "interval"]
        unknown = set(params) - set(expected)
        if unknown:
            raise InputError(f"unknown {target.__name__} parameters {sorted(unknown)}; expected {expected}")
        if isinstance(params.get("guidance_scale"), list):
            params["guidance_scale"] = torch.tensor(params["guidance_scale"], dtype=torch.float64)
        return target(**params)

    def __repr__(self):
        config = {k: v for k, v in self.to_dict().items() if k != "type"}
        if self.interval is not None:
            config["interval"] = self.interval
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"

    def __eq__(self, other):
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    __hash__ = None


class APG(Guidance):
    """Adaptive projected guidance (Alg. 1): down-weighted parallel part, rescaling, reverse momentum."""

    label = "APG"
    parameters = (_ETA, _NORM_THRESHOLD, _MOMENTUM)

    def __init__(self, guidance_scale, eta=0.0, norm_threshold=0.0, momentum=-0.5, *, interval=None):
        super().__init__(guidance_scale, eta=eta, norm_threshold=norm_threshold, momentum=momentum, interval=interval)

    @classmethod
    def from_preset(cls, name: str, guidance_scale, *, interval=None) -> "APG":
        """The paper's eta, r and beta for a model family; see PRESETS."""
        if name not in PRESETS:
            raise InputError(f"preset {name!r} is not one of {sorted(PRESETS)}")
        return cls(guidance_scale, **PRESETS[name], interval=interval)


class MomentumCFG(Guidance):
    """CFG with the paper's reverse momentum and rescaling, no projection (APG with eta = 1)."""

    label = "MomentumCFG"
    parameters = (_MOMENTUM, _NORM_THRESHOLD)

    def __init__(self, guidance_scale, momentum=-0.5, norm_threshold=0.0, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=norm_threshold, momentum=momentum, interval=interval)


class CFG(Guidance):
    """Classifier-free guidance: pred_uncond + w (pred_cond - pred_uncond) (Ho & Salimans 2022)."""

    label = "CFG"
    parameters = ()

    def __init__(self, guidance_scale, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=0.0, momentum=0.0, interval=interval)


class CFGZeroStar(Guidance):
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886) on the raw (velocity) output: CFG against the
    optimally scaled unconditional output, and zero output for the first `zero_init_steps` steps.

    Equals Diffusers' ClassifierFreeZeroStarGuidance(guidance_scale=w, zero_init_steps=k). Zero-init holds
    whatever the interval (it starts the ODE at zero velocity; it is not guidance). Needs `step` when k > 0.
    """

    label = "CFG-Zero*"
    space = "raw"
    parameters = (_ZERO_INIT_STEPS,)

    def __init__(self, guidance_scale, zero_init_steps=1, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=0.0, momentum=0.0, interval=interval)
        self.zero_init_steps = _ZERO_INIT_STEPS.validate(zero_init_steps)

    def _zeroed(self, step) -> bool:
        if self.zero_init_steps == 0:
            return False
        if step is None:
            raise ValueError(f"step=None, but {self!r} zeroes the first steps: pass step, the 0-based step index")
        return step < self.zero_init_steps

    def _outside(self, pred_cond, step):
        return torch.zeros_like(pred_cond) if self._zeroed(step) else pred_cond.clone()

    def _guide(self, pred_cond, pred_uncond, step):
        if self._zeroed(step):
            return torch.zeros_like(pred_cond)
        return cfg_zero_star(pred_cond, pred_uncond, self._scale_on(pred_cond))


# short name -> class, in display order; the CLIs, the evaluation and the app offer these.
METHODS: dict[str, type[Guidance]] = {"cfg": CFG, "apg": APG, "mcfg": MomentumCFG, "cfg-zero-star": CFGZeroStar}


def register_method(name: str, cls: type[Guidance]) -> None:
    """Offer `cls` under the short `name` everywhere METHODS is read; ValueError if the name is taken."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise InputError(f"method name must be a non-empty string without surrounding spaces, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Guidance)):
        raise InputTypeError(f"cls must be a subclass of apg.Guidance, got {cls!r}")
    if METHODS.get(name, cls) is not cls:
        raise InputError(f"method name {name!r} is already registered for {METHODS[name].__name__}")
    METHODS[name] = cls
