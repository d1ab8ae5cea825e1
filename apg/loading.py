"""One loader for every entry point (`apg compare`, `apg-eval`, the app): builtin, a local folder or a hub id."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ModelLoadError", "load_pipeline"]

BUILTIN = "builtin"


class ModelLoadError(ValueError):
    """A model that cannot be loaded here; the message is one line that says what to do."""


def load_pipeline(model: str, device=None, dtype=None):
    """'builtin' (the offline CIFAR-10 model), a local Diffusers pipeline folder or a hub id; never remote code.

    Loading draws no progress bar and logs no hub retries: a failure is one line, not a screenful.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelLoadError(f"model must be 'builtin', a local pipeline folder or a hub id, got {model!r}")
    from diffusers.utils import logging

    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        pipe = _load(model, dtype)
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    return pipe.to(device) if device is not None else pipe


def _load(model: str, dtype):
    if model == BUILTIN:
        from .builtin import load_builtin

        return load_builtin()  # float32: the model is tiny and exact
    from diffusers import DiffusionPipeline
    from diffusers.utils import deprecation_utils

    local = Path(model).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise ModelLoadError(f"model {model!r} is a path without a model_index.json: not a Diffusers pipeline folder")
    # Diffusers renamed torch_dtype to dtype (the old name warns); older releases know only torch_dtype.
    dtype_arg = "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    try:
        return DiffusionPipeline.from_pretrained(model, **{dtype_arg: dtype})
    except OSError as error:
        if local.exists():
            raise ModelLoadError(f"cannot load the pipeline folder {model!r}: {str(error).splitlines()[0]}") from None
        raise ModelLoadError(
            f"model {model!r} is not in the local Hugging Face cache and could not be downloaded; pass a local "
            "pipeline folder (--model PATH), or run once on a machine with network access to cache it"
        ) from None
