"""Saturation, clipping and the Frechet distance: the closed-form metrics, in float64, no feature extractor."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError, InputTypeError

__all__ = ["saturation", "per_image_saturation", "clipping", "per_image_clipping", "frechet_distance",
           "feature_statistics"]


def _to_rgb_float64(image) -> np.ndarray:
    """One image or a batch -> [N, H, W, 3] float64 in [0, 1].

    Conventions: torch tensors are channel-first ([C, H, W] or [N, C, H, W]), numpy arrays are channel-last
    ([H, W, C] or [N, H, W, C], as PIL and Diffusers' output_type="np"); uint8 means 0..255, floats mean 0..1.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)[None] / 255.0
    if isinstance(image, torch.Tensor):
        if image.ndim not in (3, 4):
            raise InputError(f"images: a tensor must be [C, H, W] or [N, C, H, W], got shape {tuple(image.shape)}")
        array = image.detach().cpu()
        array = (array[None] if array.ndim == 3 else array).movedim(1, -1).numpy()
    elif isinstance(image, np.ndarray):
        if image.ndim not in (3, 4):
            raise InputError(f"images: an array must be [H, W, C] or [N, H, W, C], got shape {image.shape}")
        array = image[None] if image.ndim == 3 else image
    else:
        raise InputTypeError(
            f"images: expected a PIL image, a tensor, an array or a list of them, got {type(image).__name__}"
        )
    if array.shape[-1] != 3:
        raise InputError(f"images: expected 3 colour channels (RGB), got shape {array.shape} (channels last here)")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise InputTypeError(f"images: expected uint8 or floating point pixels, got dtype {array.dtype}")
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"images: float pixels must lie in [0, 1], got range [{low:.4g}, {high:.4g}] "
            "(for pixels in [-1, 1] pass (x + 1) / 2)"
        )
    return array


def _per_image(images, per_batch) -> np.ndarray:
    """per_batch([N, H, W, 3] float64 in [0, 1]) -> [N], over one image, a batch, or a list of them."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("images: got an empty list")
        return np.concatenate([_per_image(image, per_batch) for image in images])
    return per_batch(_to_rgb_float64(images))


def _saturation(rgb: np.ndarray) -> np.ndarray:
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    # S = (max - min) / max, defined as 0 for black pixels (max = 0).
    per_pixel = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return per_pixel.reshape(len(per_pixel), -1).mean(axis=1)


def _clipping(rgb: np.ndarray) -> np.ndarray:
    clipped = (rgb <= 0.0) | (rgb >= 1.0)
    return clipped.reshape(len(clipped), -1).mean(axis=1)


def per_image_saturation(images) -> np.ndarray:
    """Mean HSV saturation of each image, [N] float64 (see `saturation` for the conventions)."""
    return _per_image(images, _saturation)


def saturation(images) -> float:
    """The paper's saturation: per-pixel HSV S = (max - min) / max, mean over pixels, then over images.

    `images`: a PIL image, a uint8 or float tensor ([C, H, W] / [N, C, H, W]), a numpy array
    ([H, W, C] / [N, H, W, C]), or a list of these. uint8 is 0..255, float is 0..1. Pure red 1, grey 0.
    """
    return float(per_image_saturation(images).mean())


def per_image_clipping(images) -> np.ndarray:
    """Fraction of each image's channel values at the ends of the range (0 or 1; uint8 0 or 255), [N] float64."""
    return _per_image(images, _clipping)


def clipping(images) -> float:
    """Fraction of pixel values clipped: at 0 or 1 after the pipeline's clamp (0 or 255 in uint8), mean over images.

    Pipelines clamp their decoded images to [0, 1], so a value the model pushed outside the range ends at an
    end of it; counting the ends needs no access to the unclamped decode and works for any pipeline's output.
    A burnt (white) or crushed (black) pixel has saturation near 0, so saturation alone reads *lower* for
    the images that high-scale CFG burns; this is the number that shows them. Natural images rarely sit
    exactly at 0 or 255: on the CIFAR-10 (JPEG) test set (10,000 images) clipping is 0.0173.
    """
    return float(per_image_clipping(images).mean())


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise InputError(f"features must be [N, D] with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (round-off negative eigenvalues -> 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^(1/2), in float64, real by construction.

    Tr (S1 S2)^(1/2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))): the inner matrix is symmetric PSD, so its
    eigenvalues are real; no sqrtm, no complex part to drop, and singular covariances are fine.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    for name, value, shape in (("mu1", mu1, (dim,)), ("mu2", mu2, (dim,)),
                               ("sigma1", sigma1, (dim, dim)), ("sigma2", sigma2, (dim, dim))):
        if value.shape != shape:
            raise InputError(f"{name} must have shape {shape} to match mu1, got {value.shape}")
        if not np.isfinite(value).all():
            raise InputError(f"{name} contains NaN or infinite values")
    sqrt_sigma1 = _psd_sqrt(sigma1)
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
