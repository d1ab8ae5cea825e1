"""Deprecated alias of apg.runtime, kept until every caller imports apg.runtime."""

from .runtime import BUILTIN, ModelLoadError, load_pipeline

__all__ = ["BUILTIN", "ModelLoadError", "load_pipeline"]
