"""Guidance rules on denoised (x0) predictions: CFG, APG and momentum CFG.

Sadat, Hilliges, Weber, "Eliminating Oversaturation and Artifacts of High Guidance Scales in
Diffusion Models", ICLR 2025, arXiv 2410.02416, Algorithm 1. Pure torch: no Diffusers import.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import _fused

__all__ = ["Guidance", "APG", "MomentumCFG", "CFG", "PRESETS", "apg_step", "apg_torch"]

# The paper's per-model settings (w is chosen per experiment, so presets fix eta, r and beta only).
# Source for all three: the paper's implementation details (arXiv 2410.02416, appendix), as reported by
# secondary sources quoted in the project's issue #2; the paper's own code was not available to check them.
PRESETS: dict[str, dict[str, float]] = {
    "sdxl": {"eta": 0.0, "norm_threshold": 15.0, "momentum": -0.5},  # Stable Diffusion XL
    "sd21": {"eta": 0.0, "norm_threshold": 7.5, "momentum": -0.75},  # Stable Diffusion 2.1
    "edm2-s": {"eta": 0.0, "norm_threshold": 2.5, "momentum": -0.75},  # EDM2-S, ImageNet-512
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


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _scale(value):
    if not isinstance(value, torch.Tensor):
        return _real("guidance_scale", value)
    if value.ndim != 1 or value.numel() == 0 or not value.dtype.is_floating_point:
        raise ValueError(
            "guidance_scale as a tensor must be 1-D floating point with one scale per sample, "
            f"got shape {tuple(value.shape)} and dtype {value.dtype}"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"guidance_scale must be finite, got {value.tolist()}")
    return value.detach().to("cpu", torch.float64).clone()


class Guidance:
    """Algorithm 1 with all its knobs; call it once per sampling step on x0 predictions.

    guided = g(pred_cond, pred_uncond)   # [B, ...] each, same shape, dtype, device; x0 space
    g.reset()                            # clear the momentum state before a new run
    """

    _params = ("guidance_scale", "eta", "norm_threshold", "momentum")
    _registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Guidance._registry[cls.__name__] = cls

    def __init__(self, guidance_scale, *, eta=0.0, norm_threshold=0.0, momentum=0.0):
        self.guidance_scale = _scale(guidance_scale)
        self.eta = _real("eta", eta)
        self.norm_threshold = _real("norm_threshold", norm_threshold)
        if self.norm_threshold < 0:
            raise ValueError(f"norm_threshold must be >= 0 (0 turns rescaling off), got {norm_threshold!r}")
        self.momentum = _real("momentum", momentum)
        self._running = None  # momentum buffer: [B, ...] in the compute dtype, owned by one run
        self._scale_cache = None  # (device, dtype, tensor) for a per-sample scale

    def reset(self):
        """Forget the momentum state; call between sampling runs."""
        self._running = None

    def __call__(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor) -> torch.Tensor:
        self._check(pred_cond, pred_uncond)
        scale = self._scale_on(pred_cond)
        if self.momentum == 0 and self.norm_threshold == 0 and self.eta == 1:
            # Plain CFG: pred_uncond + w (pred_cond - pred_uncond) in one fused kernel.
            weight = scale if not isinstance(scale, torch.Tensor) else scale.view((-1,) + (1,) * (pred_cond.ndim - 1))
            return torch.lerp(pred_uncond, pred_cond, weight)
        knobs = (scale, self.eta, self.norm_threshold, self.momentum)
        kernel = _fused.kernel(pred_cond)
        if kernel is not None:  # CPU: two memory passes in C instead of ~8 torch ops (apg/_fused.py)
            guided, self._running = _fused.apg(kernel, pred_cond, pred_uncond, self._running, *knobs)
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
    def to_dict(self) -> dict:
        """JSON-able config: {"type": class name, parameters...}."""
        out = {"type": type(self).__name__}
        for name in self._params:
            value = getattr(self, name)
            out[name] = value.tolist() if isinstance(value, torch.Tensor) else value
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "Guidance":
        """Inverse of to_dict; on Guidance itself the "type" key picks the class."""
        if not isinstance(config, dict) or "type" not in config:
            raise ValueError(f"config must be a dict with a 'type' key, got {config!r}")
        target = Guidance._registry.get(config["type"])
        if target is None or not issubclass(target, cls):
            known = sorted(k for k, v in Guidance._registry.items() if issubclass(v, cls))
            raise ValueError(f"config type {config['type']!r} is not one of {known}")
        params = {k: v for k, v in config.items() if k != "type"}
        unknown = set(params) - set(target._params)
        if unknown:
            raise ValueError(f"unknown {target.__name__} parameters {sorted(unknown)}; expected {list(target._params)}")
        if isinstance(params.get("guidance_scale"), list):
            params["guidance_scale"] = torch.tensor(params["guidance_scale"], dtype=torch.float64)
        return target(**params)

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other):
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    __hash__ = None


class APG(Guidance):
    """Adaptive projected guidance (Alg. 1): down-weighted parallel part, rescaling, reverse momentum."""

    def __init__(self, guidance_scale, eta=0.0, norm_threshold=0.0, momentum=-0.5):
        super().__init__(guidance_scale, eta=eta, norm_threshold=norm_threshold, momentum=momentum)

    @classmethod
    def from_preset(cls, name: str, guidance_scale) -> "APG":
        """The paper's eta, r and beta for a model family; see PRESETS."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is not one of {sorted(PRESETS)}")
        return cls(guidance_scale, **PRESETS[name])


class MomentumCFG(Guidance):
    """CFG with the paper's reverse momentum and rescaling, no projection (APG with eta = 1)."""

    _params = ("guidance_scale", "norm_threshold", "momentum")

    def __init__(self, guidance_scale, momentum=-0.5, norm_threshold=0.0):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=norm_threshold, momentum=momentum)


class CFG(Guidance):
    """Classifier-free guidance: pred_uncond + w (pred_cond - pred_uncond) (Ho & Salimans 2022)."""

    _params = ("guidance_scale",)

    def __init__(self, guidance_scale):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=0.0, momentum=0.0)
