"""apg: adaptive projected guidance (APG), momentum CFG and related rules for Hugging Face Diffusers pipelines.

`import apg` stays light (torch only); the Diffusers-facing parts load on first use.
"""

from importlib import import_module

from . import errors, quirks
from ._fused import status as kernel_status
from .guidance import (
    APG, CFG, INTERVALS, METHODS, PRESETS, SCALE, CFGZeroStar, Guidance, MomentumCFG, Param, register_method,
)
from .setting import Setting
from .rules import FDG, TCFG, MamboG  # registers fdg, tcfg and mambo-g in METHODS

__version__ = "0.1.0"

# name -> module that defines it, imported on first attribute access (Diffusers is heavy to import).
_LAZY = {
    "guide": "apg.integration",
    "register_pipeline": "apg.registry",
    "GuidancePipelineMixin": "apg.integration",
    "load_builtin": "apg.builtin",
    "set_skipping": "apg._skip",
}

__all__ = [
    "APG", "CFG", "MomentumCFG", "CFGZeroStar", "FDG", "TCFG", "MamboG", "Guidance", "Param", "SCALE", "METHODS",
    "register_method", "PRESETS", "INTERVALS", "Setting", "errors", "quirks", "kernel_status", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'apg' has no attribute {name!r}")
