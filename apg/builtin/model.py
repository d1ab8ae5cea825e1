"""An exact denoiser for a class-conditional Gaussian mixture, as a Diffusers model that predicts the noise.

Class k is N(mu_k, Sigma_k) over pixels in [-1, 1], with Sigma_k = U_k diag(e_k) U_k^T + r_k (I - U_k U_k^T)
(top eigenvectors U_k [D, R], their variances e_k, an isotropic residual r_k). With y = x0 + sigma * noise,
the posterior mean given class k is exact at every noise level:

    E[x0 | y, k] = mu_k + r_k / (r_k + s^2) (y - mu_k) + U_k ((e_k / (e_k + s^2) - r_k / (r_k + s^2)) p_k),
    p_k = U_k^T (y - mu_k),   s = sigma,

and the unconditional one is the same weighted by the posterior class probabilities p(k | y).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class GaussianMixtureOutput(BaseOutput):
    sample: torch.Tensor  # [B, C, H, W], the predicted noise


class GaussianMixtureDenoiser(ModelMixin, ConfigMixin):
    """Predicts epsilon from (x_t, t, class_labels) under its own VP schedule; label num_classes = unconditional."""

    @register_to_config
    def __init__(
        self,
        num_classes: int = 10,
        rank: int = 256,
        in_channels: int = 3,
        sample_size: int = 32,
        class_names: list[str] | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
    ):
        super().__init__()
        dim = in_channels * sample_size * sample_size
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names, expected num_classes={num_classes}")
        # Fixed statistics, not trained: parameters only so that save/load and .to() treat them like weights.
        self.means = nn.Parameter(torch.zeros(num_classes, dim), requires_grad=False)  # [K, D]
        # [K, D, R], orthonormal columns (until loaded: the first R pixel axes, a valid if dull mixture)
        self.basis = nn.Parameter(torch.eye(dim, rank).repeat(num_classes, 1, 1), requires_grad=False)
        self.variances = nn.Parameter(torch.ones(num_classes, rank), requires_grad=False)  # [K, R]
        self.residual_variance = nn.Parameter(torch.ones(num_classes), requires_grad=False)  # [K]
        # The same alphas_cumprod (float32) every stock scheduler builds from this config.
        alphas_cumprod = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule,
        ).alphas_cumprod.double()
        self._log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().numpy()  # [T], float64
        self._derived = None  # (key, tensors) cache; see _statistics

    def sigma_at(self, timestep: torch.Tensor) -> torch.Tensor:
        """Noise level sigma = sqrt((1 - abar) / abar) at (fractional) training timesteps, float64 CPU.

        Fractional t interpolates log sigma linearly, the inverse of Euler-type schedulers' _sigma_to_t.
        """
        t = timestep.detach().to("cpu", torch.float64).numpy()
        grid = np.arange(len(self._log_sigmas), dtype=np.float64)
        if not np.isfinite(t).all() or t.min() < 0 or t.max() > grid[-1]:
            raise ValueError(f"timestep must lie in [0, {int(grid[-1])}], got {t.tolist()}")
        return torch.from_numpy(np.exp(np.interp(t, grid, self._log_sigmas)))

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor, return_dict: bool = True):
        """sample [B, C, H, W] = sqrt(abar) x0 + sqrt(1 - abar) noise; returns the noise prediction."""
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep).reshape(-1).expand(batch)
        class_labels = torch.as_tensor(class_labels, device=sample.device).reshape(-1)
        num_classes = self.config.num_classes
        if class_labels.shape[0] != batch or class_labels.dtype.is_floating_point:
            raise ValueError(f"class_labels must be {batch} integer ids, got {class_labels.tolist()}")
        if class_labels.min() < 0 or class_labels.max() > num_classes:
            raise ValueError(
                f"class_labels must lie in [0, {num_classes}] ({num_classes} = unconditional), "
                f"got {class_labels.tolist()}"
            )
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        sigma = self.sigma_at(timestep).to(sample.device, dtype)  # [B]
        y = sample.reshape(batch, -1).to(dtype) * torch.sqrt(1 + sigma**2)[:, None]  # x0 + sigma * noise, [B, D]
        denoised = self.posterior_mean(y, sigma, class_labels)
        noise = ((y - denoised) / sigma[:, None]).view(sample.shape).to(sample.dtype)
        return GaussianMixtureOutput(sample=noise) if return_dict else (noise,)

    def posterior_mean(self, y: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """E[x0 | y] for y = x0 + sigma * noise, [B, D]; label num_classes mixes all classes by p(k | y)."""
        projector, variances, residual, mean_proj, mean_sq = self._statistics(y.device, y.dtype)
        batch, dim, (num_classes, rank) = y.shape[0], y.shape[1], variances.shape
        s2 = (sigma**2)[:, None]  # [B, 1]
        # One GEMM gives every class's basis coordinates and y . mu_k: [B, K * R + K].
        coords = y @ projector
        proj = coords[:, : num_classes * rank].view(batch, num_classes, rank) - mean_proj  # U_k^T (y - mu_k)
        dist_sq = y.square().sum(-1, keepdim=True) - 2 * coords[:, num_classes * rank:] + mean_sq  # ||y - mu_k||^2
        var_in = variances + s2[:, :, None]  # [B, K, R], variance of y along U_k
        var_out = residual + s2  # [B, K], variance of y off U_k

        # log N(y; mu_k, Sigma_k + s^2 I) up to a shared constant; uniform class prior.
        proj_sq = proj.square()
        off_sq = (dist_sq - proj_sq.sum(-1)).clamp_min(0)  # energy off the basis, [B, K]
        mahalanobis = (proj_sq / var_in).sum(-1) + off_sq / var_out
        log_det = var_in.log().sum(-1) + (dim - rank) * var_out.log()
        responsibilities = torch.softmax(-0.5 * (mahalanobis + log_det), dim=-1)  # [B, K]
        one_hot = nn.functional.one_hot(class_labels.clamp(max=num_classes - 1), num_classes).to(y.dtype)
        weights = torch.where((class_labels == num_classes)[:, None], responsibilities, one_hot)  # [B, K]

        shrink_out = residual / var_out  # [B, K]
        shrink_in = variances / var_in - shrink_out[:, :, None]  # [B, K, R]
        # sum_k w_k (mu_k + c_k (y - mu_k) + U_k (shrink_in_k * p_k)): the basis and mean terms in one GEMM.
        coeffs = torch.cat([(weights[:, :, None] * shrink_in * proj).view(batch, -1), weights * (1 - shrink_out)], 1)
        return (weights * shrink_out).sum(-1, keepdim=True) * y + coeffs @ projector.T

    def _statistics(self, device, dtype):
        """Parameters in the compute dtype, the basis re-orthonormalised (fp16 storage rounds it); cached."""
        params = (self.means, self.basis, self.variances, self.residual_variance)
        key = (device, dtype, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
        if self._derived is None or self._derived[0] != key:
            means, basis, variances, residual = (p.detach().to(device, dtype) for p in params)
            # Cholesky QR: U chol(U^T U)^-T has orthonormal columns; U^T U is ~I, so float32 suffices.
            chol = torch.linalg.cholesky(basis.transpose(1, 2) @ basis)  # [K, R, R]
            basis = torch.linalg.solve_triangular(chol, basis.transpose(1, 2), upper=False).transpose(1, 2)
            projector = torch.cat([basis.permute(1, 0, 2).reshape(basis.shape[1], -1), means.T], 1)  # [D, K*R + K]
            mean_proj = torch.einsum("kd,kdr->kr", means, basis)  # [K, R]
            tensors = (projector, variances, residual, mean_proj, means.square().sum(-1))
            self._derived = (key, tuple(t.contiguous() for t in tensors))
        return self._derived[1]
