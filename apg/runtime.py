"""One runtime for every entry point (`apg compare`, `apg eval`, the app): device, dtype and model loading.

    device = resolve_device(None)            # cuda if available, else cpu
    dtype = resolve_dtype(None, device)      # float32 on CPU; bfloat16 on CUDA where supported, else float16
    pipe = load_pipeline("builtin")          # or a hub id, or a local Diffusers pipeline folder
    takes = call_parameters(pipe)            # the call arguments it takes ("prompt", "class_labels", ...)
    images = generate(pipe, prompt=["a fox"], num_inference_steps=8, output_type="pil").images
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from types import SimpleNamespace

import torch

from .errors import ApgError, InputError, ModelLoadError, UnsupportedError

__all__ = ["BUILTIN", "DTYPES", "ModelLoadError", "resolve_device", "resolve_dtype", "load_pipeline",
           "call_parameters", "generate", "modular_folder"]

BUILTIN = "builtin"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The torch device for `name` ('cpu', 'cuda', 'cuda:1', 'mps'); None: cuda if available, else cpu.

    A device this machine lacks is an apg.errors.InputError (a ValueError) with one line, not a torch
    traceback at the first tensor.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"device must be a torch device such as cpu, cuda or cuda:1, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: CUDA is not available on this machine (no GPU, or a CPU-only "
                             "torch build); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name!r}: MPS is not available on this machine; use cpu")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """The compute dtype for `name` (float32, float16, bfloat16); None: the device's default.

    The default is float32 on the CPU (16-bit matmuls there are slow and inexact), bfloat16 on CUDA
    where the GPU supports it (no float16 overflow in large UNets and transformers), float16 otherwise.
    """
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {name}")
        return name
    if name is not None:
        if name not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
        return DTYPES[name]
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def load_pipeline(model: str, device=None, dtype=None):
    """'builtin' (the offline CIFAR-10 model), a local Diffusers pipeline folder or a hub id, on `device`.

    A folder with a modular_model_index.json loads as a ModularPipeline (guided through its guider slot).

    device and dtype: names or torch objects; None picks resolve_device/resolve_dtype's defaults, except
    that the built-in model stays on the CPU in float32 unless told otherwise (it is tiny and exact: a GPU
    would only add transfers). Never runs remote code. Loading draws no progress bar and logs no hub
    retries: a failure is one ModelLoadError line.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelLoadError(f"model must be 'builtin', a local pipeline folder or a hub id, got {model!r}")
    try:
        device = resolve_device("cpu" if device is None and model == BUILTIN else device)
        dtype = None if dtype is None and model == BUILTIN else resolve_dtype(dtype, device)
    except InputError as error:
        raise ModelLoadError(str(error)) from None
    with _quiet():
        pipe = _load_builtin(dtype) if model == BUILTIN else _from_pretrained(model, dtype)
    return pipe.to(device)


@contextlib.contextmanager
def _quiet():
    """No loading bars or hub retry warnings from Diffusers and Transformers (a download's own bar stays)."""
    import diffusers.utils.logging as diffusers_logging

    loggers = [diffusers_logging]
    try:
        import transformers.utils.logging as transformers_logging

        loggers.append(transformers_logging)
    except ImportError:
        pass
    saved = [(log, log.is_progress_bar_enabled(), log.get_verbosity()) for log in loggers]
    for log in loggers:
        log.disable_progress_bar()
        log.set_verbosity_error()
    try:
        yield
    finally:
        for log, bars, verbosity in saved:
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()


def _load_builtin(dtype):
    from .builtin import load_builtin

    pipe = load_builtin()
    return pipe if dtype is None else pipe.to(dtype=dtype)


def _dtype_keyword() -> str:
    """`dtype` where the installed Diffusers has it (0.36+; `torch_dtype` warns there), else `torch_dtype`."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def modular_folder(model: str) -> bool:
    """Whether `model` is a local folder that loads as a ModularPipeline: a modular_model_index.json and no
    model_index.json."""
    local = Path(model).expanduser()
    return (local / "modular_model_index.json").is_file() and not (local / "model_index.json").is_file()


def _from_pretrained(model: str, dtype: torch.dtype):
    from diffusers import DiffusionPipeline, ModularPipeline

    local = Path(model).expanduser()
    modular = modular_folder(model)
    if local.exists() and not modular and not (local / "model_index.json").is_file():
        raise ModelLoadError(f"model {model!r} is a path without a model_index.json or modular_model_index.json: "
                             "not a Diffusers pipeline folder")
    try:
        if modular:  # a ModularPipeline (its guider component included), every component loaded
            pipe = ModularPipeline.from_pretrained(str(local), trust_remote_code=False)
            pipe.load_components(**{_dtype_keyword(): dtype})
            return pipe
        return DiffusionPipeline.from_pretrained(str(local) if local.exists() else model, trust_remote_code=False,
                                                 **{_dtype_keyword(): dtype})
    except OSError as error:
        if local.exists():
            raise ModelLoadError(f"cannot load the pipeline folder {model!r}: {_first_line(error)}") from None
        raise ModelLoadError(
            f"model {model!r} is not in the local Hugging Face cache and could not be downloaded: give a local "
            "Diffusers pipeline folder instead, or load it once on a machine with network access to cache it"
        ) from None
    except (ValueError, ImportError, AttributeError, KeyError) as error:  # a config naming unknown classes
        raise ModelLoadError(f"cannot load model {model!r}: {type(error).__name__}: {_first_line(error)}") from None


# A ModularPipeline takes its blocks' declared inputs as keywords and returns the one output it is asked for; the
# entry points run it in their text-to-image scope: a prompt in, this output out.
MODULAR_OUTPUT = "images"


def call_parameters(pipe) -> frozenset[str]:
    """The call arguments `pipe` takes: its __call__ signature; for a ModularPipeline, the inputs of the blocks a
    prompt-only call runs (image, mask and control inputs select other workflows, outside this scope).

    A ModularPipeline that does not turn a prompt into images is an apg.errors.UnsupportedError.
    """
    if not _is_modular(pipe):
        return frozenset(inspect.signature(pipe.__call__).parameters)
    try:
        blocks = pipe.blocks.get_execution_blocks(prompt="text")
    except NotImplementedError:  # a single block: the whole workflow
        blocks = pipe.blocks
    inputs, outputs = frozenset(blocks.input_names), set(blocks.intermediate_output_names)
    if "prompt" not in inputs or MODULAR_OUTPUT not in outputs:
        raise UnsupportedError(
            f"{type(pipe).__name__} is a modular pipeline that does not make images from a prompt (its prompt-only "
            f"workflow takes {'a prompt' if 'prompt' in inputs else 'no prompt'} and returns "
            f"{', '.join(sorted(outputs & {'images', 'videos', 'latents'})) or 'no images'}): apg compare and the "
            "app run modular text-to-image pipelines; guide this one with apg.guide in Python")
    return inputs


def generate(pipe, **kwargs):
    """`pipe` called with `kwargs`: its output, with `.images` (or `.frames` for video).

    Diffusers checks a call's arguments inside the call (`check_inputs`: a size not divisible by the VAE's
    factor, a prompt and embeddings together) and raises a plain ValueError; the front ends hand the user's
    values over only here, so such a refusal becomes an InputError naming the pipeline (one line, exit code 2).
    """
    try:
        if _is_modular(pipe):
            return SimpleNamespace(images=pipe(**kwargs, output=MODULAR_OUTPUT))
        return pipe(**kwargs)
    except ValueError as error:
        if isinstance(error, ApgError):
            raise
        raise InputError(f"{type(pipe).__name__} refused the call: {_first_line(error)}") from error


def _is_modular(pipe) -> bool:
    from diffusers import ModularPipeline

    return isinstance(pipe, ModularPipeline)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
