"""The built-in offline model: an exact class-conditional Gaussian-mixture denoiser fitted to CIFAR-10 (JPEG)."""

from __future__ import annotations

from pathlib import Path


from .model import CIFAR10_CLASSES, GaussianMixtureDenoiser
from .pipeline import ClassConditionalPipeline

__all__ = ["load_builtin", "GaussianMixtureDenoiser", "ClassConditionalPipeline", "CIFAR10_CLASSES", "BUILTIN_PATH"]

BUILTIN_PATH = Path(__file__).resolve().parent / "cifar10-gmm"


def load_builtin() -> ClassConditionalPipeline:
    """The CIFAR-10 Gaussian-mixture pipeline, float32 on the CPU."""
    return ClassConditionalPipeline.from_pretrained(BUILTIN_PATH)  # float32 on the CPU by default
