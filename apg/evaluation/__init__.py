"""Evaluation at scale: saturation, clipping, FID/KID/IS/precision-recall, resumable generation, sweeps.

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
    "score": ".scoring", "METRICS": ".scoring",
    "open_images": ".sources", "open_reference": ".sources", "UnknownImagesError": ".sources",
    "extract_features": ".features", "save_reference_statistics": ".features", "FeatureWeightsError": ".features",
    "generate": ".generation", "load_pipeline": ".generation",
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
