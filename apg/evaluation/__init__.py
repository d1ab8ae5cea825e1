"""Evaluation at scale: saturation, FID/KID/IS/precision-recall (torch-fidelity), resumable generation, sweeps.

Metrics and I/O are importable without Diffusers; torch-fidelity, accelerate and matplotlib load on use.
"""

from importlib import import_module

from .metrics import (
    clipping,
    feature_statistics,
    frechet_distance,
    per_image_clipping,
    per_image_saturation,
    saturation,
)

# name -> module, imported on first use (torch-fidelity, accelerate and matplotlib are optional extras).
_LAZY = {
    "score": ".fidelity", "open_images": ".fidelity", "open_reference": ".fidelity",
    "extract_features": ".fidelity", "save_reference_statistics": ".fidelity", "FeatureWeightsError": ".fidelity",
    "generate": ".generation", "make_guidance": ".generation", "load_pipeline": ".generation",
    "read_image_metadata": ".generation",
    "sweep": ".sweeps", "plot_sweep": ".sweeps", "sample_grid": ".sweeps", "collect_scores": ".sweeps",
    "write_report": ".sweeps", "clip_score": ".clip",
}

__all__ = ["saturation", "per_image_saturation", "clipping", "per_image_clipping", "frechet_distance", "feature_statistics", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'apg.evaluation' has no attribute {name!r}")
