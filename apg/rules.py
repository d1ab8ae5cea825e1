"""More rules on pred_cond and pred_uncond: frequency-decoupled guidance, tangential CFG and MAMBO-G.

Sadat, Vontobel, Salehi, Weber, "Guidance in the Frequency Domain Enables High-Fidelity Sampling at Low CFG
Scales", arXiv 2506.19713 (FDG); Kwon et al., "TCFG: Tangential Damping Classifier-free Guidance",
arXiv 2503.18137; Zhu et al., "MAMBO-G: Magnitude-Aware Mitigation for Boosted Guidance", arXiv 2508.03442.
Each equals the Diffusers guider of the same name (FrequencyDecoupledGuidance, TangentialClassifierFreeGuidance,
MagnitudeAwareGuidance) in its default formulation, `pred_uncond + s * shift`, with s = w; pure torch (Diffusers'
FDG needs kornia; this one does not). Like the other rules they run on x0 by default in apg.guide.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from .errors import InputError, UnsupportedError
from .guidance import Guidance, Param, compute_dtype, register_method

__all__ = ["FDG", "TCFG", "MamboG", "fdg", "tcfg", "mambo_g", "laplacian_pyramid", "from_pyramid"]

_GUIDANCE_SCALES = Param("guidance_scales", (1.0, 0.5), 0.0, math.inf,
                         "scale of each pyramid level as a multiple of w, high to low frequency (one per level)",
                         tuple)
_PARALLEL_WEIGHTS = Param("parallel_weights", None, 0.0, 1.0,
                          "weight of each level's update parallel to the conditional level (unset: 1, no projection)",
                          tuple)
_ALPHA = Param("alpha", 8.0, 0.0, math.inf, "damping alpha: w falls as exp(-alpha ||cond - uncond|| / ||uncond||)")

# Burt and Adelson's 5-tap binomial filter; kornia's pyrdown/pyrup use its outer product (/ 256).
_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def _per_sample(coefficient, ndim):
    """A float, or a [B] tensor viewed to broadcast over [B, ...]."""
    return coefficient.view((-1,) + (1,) * (ndim - 1)) if isinstance(coefficient, torch.Tensor) else coefficient


# -- FDG -------------------------------------------------------------------------------------------------------
def _blur(x):
    """The 5x5 binomial blur per channel, borders reflected: kornia's filter2d(x, kernel, "reflect")."""
    n, c, h, w = x.shape
    taps = torch.tensor(_TAPS, dtype=x.dtype, device=x.device) / 16
    kernel = torch.outer(taps, taps).view(1, 1, 5, 5)
    return F.conv2d(F.pad(x.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode="reflect"), kernel).view(n, c, h, w)


def _down(x):
    """Blur, then halve each side (floor): kornia's pyrdown."""
    return F.interpolate(_blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def _up(x):
    """Double each side (bilinear), then blur: kornia's pyrup."""
    return _blur(F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False))


def laplacian_pyramid(x, levels: int) -> list[torch.Tensor]:
    """Band-pass levels G_k - up(G_k+1), high to low frequency, then the coarsest Gaussian level (Burt-Adelson).

    x: [N, C, H, W] with H and W divisible by 2 ** (levels - 1); kornia's build_laplacian_pyramid without its padding.
    """
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(_down(gaussian[-1]))
    return [g - _up(coarser) for g, coarser in zip(gaussian, gaussian[1:])] + [gaussian[-1]]


def from_pyramid(levels: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of laplacian_pyramid: up-sample from the coarsest level, adding each band (FDG, Alg. 2)."""
    image = levels[-1]
    for band in reversed(levels[:-1]):
        image = _up(image) + band
    return image


def _padded(size: tuple[int, int], levels: int) -> tuple[int, int]:
    """The size the pyramid is built at: kornia's rule, which the paper's code (Diffusers' FDG) inherits.

    Both sides are reflect-padded to the next power of two when neither is a power of two, or when one is not
    divisible by 2 ** (levels - 1); otherwise the size is kept.
    """
    stride = 2 ** (levels - 1)
    power_of_two = any(side & (side - 1) == 0 for side in size)
    if power_of_two and all(side % stride == 0 for side in size):
        return size
    return tuple(1 << (side - 1).bit_length() for side in size)


def _guided_level(cond, uncond, scale, weight):
    """u + s (c - u) + s (eta - 1) par, par the projection of c - u onto c, per sample; c where s = 1.

    That is u + s (eta par + orth), Diffusers' default formulation; a level whose scale is 1 is left conditional,
    as Diffusers intends (its 0.42.1 code fails there unless every level is 1); it matters only for eta != 1.
    """
    shift = cond - uncond  # [N, C, h, w]
    guided = uncond + _per_sample(scale, cond.ndim) * shift
    if weight == 1.0:
        return guided
    dot = torch.linalg.vecdot(shift.flatten(1), cond.flatten(1))  # <c - u, c>, [N]
    cond_sq = torch.linalg.vector_norm(cond.flatten(1), dim=1).square()
    ratio = dot / cond_sq.clamp(min=torch.finfo(cond_sq.dtype).tiny)  # c = 0: no parallel part
    if isinstance(scale, torch.Tensor):
        factor = torch.where(scale == 1, 0.0, scale * (weight - 1.0)) * ratio
    else:
        factor = 0.0 if math.isclose(scale, 1.0) else scale * (weight - 1.0) * ratio
    return guided + _per_sample(factor, cond.ndim) * cond


def fdg(pred_cond, pred_uncond, scales, parallel_weights):
    """FDG (arXiv 2506.19713, Alg. 2): CFG on each level of a Laplacian pyramid with its own scale, then the inverse.

    pred_cond, pred_uncond: [B, C, H, W], or video [B, C, T, H, W] (a spatial pyramid per frame). scales: one per
    level, high to low frequency, each a float or a [B] tensor in the compute dtype; parallel_weights: one per level.
    Projections are per sample over all of a level. The size rule is kornia's (_padded); the result is cropped back.
    """
    dtype, shape = pred_cond.dtype, pred_cond.shape
    size, levels = tuple(shape[-2:]), len(scales)
    x = torch.cat([pred_cond, pred_uncond]).to(compute_dtype(dtype)).reshape(2 * shape[0], -1, *size)  # [2B, C', H, W]
    padded = _padded(size, levels)
    if padded != size:
        x = F.pad(x, (0, padded[1] - size[1], 0, padded[0] - size[0]), mode="reflect")
    bands = [_guided_level(*band.chunk(2), scale, weight)
             for band, scale, weight in zip(laplacian_pyramid(x, levels), scales, parallel_weights)]
    return from_pyramid(bands)[..., : size[0], : size[1]].reshape(shape).to(dtype)


class FDG(Guidance):
    """Frequency-decoupled guidance: CFG with scale w * guidance_scales[k] on level k of a Laplacian pyramid.

    Levels run from high to low frequency (Diffusers' order); the default (1, 0.5) at w = 10 is Diffusers' default
    [10, 5], the paper's SDXL setting. parallel_weights (one per level, or one number for all) down-weights each
    level's update along the conditional level, as APG's eta; unset is 1 (no projection). Images [B, C, H, W]
    and video [B, C, T, H, W] only: packed tokens [B, N, C] have no 2-D layout (UnsupportedError).
    """

    label = "FDG"
    parameters = (_GUIDANCE_SCALES, _PARALLEL_WEIGHTS)

    def __init__(self, guidance_scale, guidance_scales=(1.0, 0.5), parallel_weights=None, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=0.0, momentum=0.0, interval=interval)
        self.guidance_scales = _GUIDANCE_SCALES.validate(guidance_scales)
        levels = len(self.guidance_scales)
        if isinstance(parallel_weights, numbers.Real) and not isinstance(parallel_weights, bool):
            parallel_weights = (parallel_weights,) * levels  # one number for every level, as Diffusers takes it
        self.parallel_weights = _PARALLEL_WEIGHTS.validate(parallel_weights)
        if self.parallel_weights is not None and len(self.parallel_weights) != levels:
            raise InputError(f"parallel_weights must have one value per level ({levels}, as guidance_scales "
                             f"{list(self.guidance_scales)}), got {list(self.parallel_weights)}")

    def at_one(self) -> bool:
        """w = 1 is not the conditional model here unless every level's scale w * guidance_scales[k] is 1."""
        scale = self.guidance_scale
        return all(bool((scale * g == 1).all()) if isinstance(scale, torch.Tensor) else scale * g == 1
                   for g in self.guidance_scales)

    def _check(self, pred_cond, pred_uncond):
        super()._check(pred_cond, pred_uncond)
        shape = tuple(pred_cond.shape)
        if pred_cond.ndim not in (4, 5):
            raise UnsupportedError(f"FDG needs images [B, C, H, W] or video [B, C, T, H, W] to build its pyramid "
                                   f"on, got shape {shape}; packed tokens [B, N, C] have no 2-D layout (use another "
                                   "rule)")
        levels = len(self.guidance_scales)
        # Each level blurred at its own size (all but the coarsest) needs sides >= 3 for the reflected border.
        padded, least = _padded(shape[-2:], levels), 2 ** levels if levels > 1 else 1
        if min(padded) < least:
            raise InputError(f"FDG with {levels} levels needs height and width of at least {least} after padding, "
                             f"got {shape[-2]} x {shape[-1]} (padded to {padded[0]} x {padded[1]}); use fewer levels")

    def _guide(self, pred_cond, pred_uncond, step):
        scale = self._scale_on(pred_cond)
        weights = self.parallel_weights or (1.0,) * len(self.guidance_scales)
        return fdg(pred_cond, pred_uncond, [scale * g for g in self.guidance_scales], weights)


# -- TCFG ------------------------------------------------------------------------------------------------------
def tcfg(pred_cond, pred_uncond, scale):
    """TCFG (arXiv 2503.18137): u' + w (c - u'), u' = u projected onto the top right-singular vector of [c; u].

    Per sample. With the Gram matrix G = [[<c,c>, <c,u>], [<c,u>, <u,u>]] and its top eigenpair (lam, e), that
    vector is (e0 c + e1 u) / sqrt(lam), so u' = k (e0 c + e1 u), k = (e0 <c,u> + e1 <u,u>) / lam: three
    reductions and a 2 x 2 eigenproblem in float64, where Diffusers takes the SVD of the [2, N] matrix.
    scale: float or [B] tensor in the compute dtype.
    """
    dtype = pred_cond.dtype
    cond, uncond = pred_cond.to(compute_dtype(dtype)), pred_uncond.to(compute_dtype(dtype))
    c, u = cond.flatten(1), uncond.flatten(1)
    a, b, d = (torch.linalg.vecdot(x, y).double() for x, y in ((c, c), (c, u), (u, u)))  # [B] each
    lam = (a + d) / 2 + torch.hypot((a - d) / 2, b)  # the top eigenvalue of G
    # Two forms of the same eigenvector; the one built on the larger diagonal entry never vanishes.
    e0, e1 = torch.where(a >= d, lam - d, b), torch.where(a >= d, b, lam - a)
    norm = torch.hypot(e0, e1).clamp(min=torch.finfo(torch.float64).tiny)
    e0, e1 = e0 / norm, e1 / norm
    k = (e0 * b + e1 * d) / lam.clamp(min=torch.finfo(torch.float64).tiny)  # c = u = 0: u' = 0
    w = scale.double() if isinstance(scale, torch.Tensor) else scale
    coef_cond, coef_uncond = w + (1 - w) * k * e0, (1 - w) * k * e1  # guided = coef_cond c + coef_uncond u
    guided = cond * _per_sample(coef_cond.to(cond.dtype), cond.ndim)
    return guided.addcmul_(uncond, _per_sample(coef_uncond.to(cond.dtype), cond.ndim)).to(dtype)


class TCFG(Guidance):
    """Tangential CFG: CFG against the unconditional prediction with its component off the principal direction of
    (cond, uncond) removed. Equals Diffusers' TangentialClassifierFreeGuidance(guidance_scale=w)."""

    label = "TCFG"
    parameters = ()

    def __init__(self, guidance_scale, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=0.0, momentum=0.0, interval=interval)

    def _guide(self, pred_cond, pred_uncond, step):
        return tcfg(pred_cond, pred_uncond, self._scale_on(pred_cond))


# -- MAMBO-G ---------------------------------------------------------------------------------------------------
def mambo_g(pred_cond, pred_uncond, scale, alpha):
    """MAMBO-G (arXiv 2508.03442): u + w_r (c - u), w_r = 1 + (w - 1) exp(-alpha ||c - u|| / ||u||), per sample.

    scale: float or [B] tensor in the compute dtype. u = 0 gives w_r = 1 (c), unless c = u = 0 too (0).
    """
    dtype = pred_cond.dtype
    cond, uncond = pred_cond.to(compute_dtype(dtype)), pred_uncond.to(compute_dtype(dtype))
    diff = cond - uncond
    uncond_norm = torch.linalg.vector_norm(uncond.flatten(1), dim=1)
    ratio = torch.linalg.vector_norm(diff.flatten(1), dim=1) / uncond_norm.clamp(min=torch.finfo(cond.dtype).tiny)
    weight = 1 + (scale - 1) * torch.exp(-alpha * ratio)  # [B]
    return torch.addcmul(uncond, diff, _per_sample(weight, cond.ndim)).to(dtype)


class MamboG(Guidance):
    """Magnitude-aware guidance: CFG whose scale decays with the update-to-prediction ratio ||c - u|| / ||u||.
    Equals Diffusers' MagnitudeAwareGuidance(guidance_scale=w, alpha=alpha)."""

    label = "MAMBO-G"
    parameters = (_ALPHA,)

    def __init__(self, guidance_scale, alpha=8.0, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, norm_threshold=0.0, momentum=0.0, interval=interval)
        self.alpha = _ALPHA.validate(alpha)

    def _guide(self, pred_cond, pred_uncond, step):
        return mambo_g(pred_cond, pred_uncond, self._scale_on(pred_cond), self.alpha)


for _name, _cls in (("fdg", FDG), ("tcfg", TCFG), ("mambo-g", MamboG)):
    register_method(_name, _cls)
