"""The app's logic, without Gradio: the inputs and their bounds, the validated request, the model cache, the run.

Every method, knob and bound comes from the library (apg.METHODS, cls.parameters, apg.SCALE, apg.PRESETS,
apg.INTERVALS); the app adds bounds only for its own inputs (steps, seeds, size), here, in one place.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

import apg
from apg._options import SEED_MAX  # the CLI's bound: seeds are 32-bit everywhere
from apg.errors import ApgError
from apg.runtime import BUILTIN, ModelLoadError, _quiet, load_pipeline, resolve_device, resolve_dtype
from apg.setting import SYMBOLS  # noqa: F401 (the widgets' symbols: the labels' own)
from apg.schedulers import SUPPORTED_SCHEDULERS, _prediction_type, check_scheduler

log = logging.getLogger("apg.app")

SIDES = ("left", "right")
MAX_PROMPT_CHARS = 1000
MAX_MODEL_CHARS = 300
MAX_CACHED_MODELS = 2  # hub/local models kept loaded besides the built-in one (each can be GBs)

# The app's own inputs (the guidance knobs are the library's). Inclusive bounds.
STEPS = apg.Param("steps", 25, 1, 1000, "sampling steps", int)
SEED = apg.Param("seed", 0, 0, SEED_MAX, "first seed; the gallery shows seed, seed + 1, ...", int)
NUM_SEEDS = apg.Param("num_seeds", 4, 1, 8, "seeds in the gallery", int)
SIZE = apg.Param("size", 0, 64, 2048, "height or width of a text-to-image model, a multiple of 8 (0: the model's)", int)
SIGMA = apg.Param("sigma", 0.0, 0.0, math.inf, "EDM noise level sigma = sigma_t / alpha_t")

# "default" keeps the model's own scheduler; the others are the Diffusers classes apg.guide supports.
DEFAULT_SCHEDULER = "default"
SCHEDULERS = (DEFAULT_SCHEDULER, *SUPPORTED_SCHEDULERS)
INTERVAL_OFF, INTERVAL_CUSTOM = "off", "custom"
# Call arguments that mark a pipeline the app cannot drive: it needs an input image, or it makes video.
UNSUPPORTED_INPUTS = {"image": "an input image", "mask_image": "a mask", "control_image": "a control image",
                      "num_frames": "video frames"}
SCOPE = ("The app runs text-to-image and class-conditional pipelines; image-to-image, inpainting, control "
         "and video pipelines work with apg.guide in Python")


class InputError(apg.errors.InputError):
    """An input the app refuses; the message names the input and the value."""


def method_parameters() -> dict[str, apg.Param]:
    """Every knob of every registered method, by name (first declaration wins for the widget)."""
    params: dict[str, apg.Param] = {}
    for cls in apg.METHODS.values():
        for param in cls.parameters:
            params.setdefault(param.name, param)
    return params


def defaults() -> dict:
    """Every input by name with its default: the library's class defaults (CFG left, APG right).

    A knob the side's default method lacks defaults to None: "the chosen method's own default".
    """
    values = dict(model=BUILTIN, prompt="cat", negative_prompt="", seed=SEED.default, num_seeds=NUM_SEEDS.default,
                  steps=STEPS.default, scheduler=DEFAULT_SCHEDULER, guidance_scale=apg.SCALE.default, height=0, width=0)
    for side, method in zip(SIDES, ("cfg", "apg")):
        own = {param.name: param.default for param in apg.METHODS[method].parameters}
        values[f"{side}_method"] = method
        values.update({f"{side}_{name}": own.get(name) for name in method_parameters()})
        values.update({f"{side}_interval": INTERVAL_OFF, f"{side}_sigma_low": None, f"{side}_sigma_high": None})
    return values


# -- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """Validated inputs of one comparison."""

    model: str
    prompt: str
    negative_prompt: str
    seeds: tuple[int, ...]
    steps: int
    scheduler: str
    guidance_scale: float
    height: int
    width: int
    left: apg.Setting  # each side's method, knobs and interval, at guidance_scale
    right: apg.Setting


def bounds_text(param: apg.Param) -> str:
    """'in [1, 1000]' or '>= 0'."""
    low, high = (int(b) if param.kind is int and math.isfinite(b) else b for b in (param.low, param.high))
    return f">= {low}" if high == math.inf else f"in [{low}, {high}]"


def _number(name: str, value, param: apg.Param):
    """value as param.kind within param's bounds, else an InputError naming the input `name`."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) and not (value == math.inf and param is SIGMA):  # the library's knobs are finite
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if param.kind is int:
        if value != int(value):
            raise InputError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
    if not param.low <= value <= param.high:
        raise InputError(f"{name} must be {bounds_text(param)}, got {value!r}")
    return value


def _size(name, value):
    if value in (0, None):
        return 0
    size = _number(name, value, SIZE)
    if size % 8:
        raise InputError(f"{name} must be a multiple of 8 (or 0 for the model's default), got {size}")
    return size


def _interval(side, choice, low, high):
    """None for "off", a sourced preset from apg.INTERVALS, or the two sigma fields."""
    if choice == INTERVAL_OFF:
        return None
    if choice in apg.INTERVALS:
        return tuple(apg.INTERVALS[choice])
    if choice != INTERVAL_CUSTOM:
        raise InputError(f"{side}_interval must be one of {', '.join([INTERVAL_OFF, INTERVAL_CUSTOM, *apg.INTERVALS])}, "
                         f"got {choice!r}")
    low = _number(f"{side}_sigma_low", 0.0 if low is None else low, SIGMA)
    high = _number(f"{side}_sigma_high", math.inf if high is None else high, SIGMA)  # empty: no upper end
    if not low < high:
        raise InputError(f"{side}_sigma_low must be below {side}_sigma_high, got ({low:g}, {high:g}]")
    return low, high


def _side(side, values, guidance_scale) -> apg.Setting:
    method = values[f"{side}_method"]
    if method not in apg.METHODS:
        raise InputError(f"{side}_method must be one of {', '.join(apg.METHODS)}, got {method!r}")
    params = {}
    for param in apg.METHODS[method].parameters:
        value = values.get(f"{side}_{param.name}")
        params[param.name] = param.default if value is None else _number(f"{side}_{param.name}", value, param)
    interval = _interval(side, values.get(f"{side}_interval", INTERVAL_OFF),
                         values.get(f"{side}_sigma_low"), values.get(f"{side}_sigma_high"))
    return apg.Setting(method, params, scale=guidance_scale, interval=interval)


def parse_request(**values) -> Request:
    """Check every input (by name; missing ones take `defaults()`); a violation is an InputError naming it."""
    unknown = set(values) - set(defaults())
    if unknown:
        raise InputError(f"unknown inputs {sorted(unknown)}")
    values = {**defaults(), **values}
    model = (values["model"] or "").strip() or BUILTIN
    if len(model) > MAX_MODEL_CHARS:
        raise InputError(f"model must be a hub id or a local path of at most {MAX_MODEL_CHARS} characters, "
                         f"got {len(model)}")
    prompt, negative = values["prompt"], values["negative_prompt"] or ""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt (or class) must not be empty")
    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            raise InputError(f"{name} must be text of at most {MAX_PROMPT_CHARS} characters, got {len(str(text))}")
    if values["scheduler"] not in SCHEDULERS:
        raise InputError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {values['scheduler']!r}")
    guidance_scale = _number("guidance_scale", values["guidance_scale"], apg.SCALE)
    seed = _number("seed", values["seed"], SEED)
    num_seeds = _number("num_seeds", values["num_seeds"], NUM_SEEDS)
    if seed + num_seeds - 1 > SEED.high:
        raise InputError(f"seed + num_seeds - 1 must be at most {SEED.high}, got {seed + num_seeds - 1}")
    return Request(
        model=model,
        prompt=prompt.strip(),
        negative_prompt=negative.strip(),
        seeds=tuple(range(seed, seed + num_seeds)),
        steps=_number("steps", values["steps"], STEPS),
        scheduler=values["scheduler"],
        guidance_scale=guidance_scale,
        height=_size("height", values["height"]),
        width=_size("width", values["width"]),
        left=_side("left", values, guidance_scale),
        right=_side("right", values, guidance_scale),
    )


# -- models ---------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A cached pipeline and the lock that serialises its use (apg.guide mutates the pipeline)."""

    pipe: object
    lock: threading.Lock
    class_conditional: bool
    schedulers: tuple[str, ...] = (DEFAULT_SCHEDULER,)  # what the scheduler menu offers: fitting_schedulers


def _frame(scheduler) -> str:
    """What the model's output means: 'flow' (velocity), 'edm' (EDM preconditioning) or 'vp' (the rest)."""
    family = check_scheduler(scheduler)
    if _prediction_type(scheduler) in ("flow", "flow_prediction"):
        return "flow"
    return "edm" if family == "edm" else "vp"


def fitting_schedulers(scheduler) -> tuple[str, ...]:
    """DEFAULT_SCHEDULER, then each supported scheduler that can run the model whose own scheduler this is.

    A candidate fits when Diffusers lists it as compatible, its `from_config` of the model's scheduler config is
    one apg supports (apg.schedulers' table, with the prediction type that config gives it), and it reads the
    model output in the same frame: a flow-matching model gets no DDIM, an epsilon model no FlowMatch.
    """
    import diffusers

    compatible = {cls.__name__ for cls in scheduler.compatibles} | {type(scheduler).__name__}
    frame, fits = _frame(scheduler), [DEFAULT_SCHEDULER]
    for name in SUPPORTED_SCHEDULERS:
        if name not in compatible:
            continue
        try:
            with _quiet():  # from_config logs every config key the candidate ignores
                candidate = getattr(diffusers, name).from_config(scheduler.config)
            if _frame(candidate) == frame:
                fits.append(name)
        except (ValueError, TypeError, NotImplementedError):  # the candidate's constructor or check_scheduler refuses
            continue
    return tuple(fits)


def _load(model_id):
    # The built-in model is tiny: the CPU in float32, so copy-as-code's apg.load_builtin() gives the same pixels.
    return load_pipeline(model_id, "cpu" if model_id == BUILTIN else None)


class ModelCache:
    """Loads pipelines lazily, once per id, and keeps the most recently used ones."""

    def __init__(self, max_models=MAX_CACHED_MODELS, loader=_load):
        self.max_models = max_models
        self._loader = loader
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> LoadedModel:
        with self._lock:
            load_lock = self._loading.setdefault(model_id, threading.Lock())
        with load_lock:  # one load per id; other ids load in parallel
            with self._lock:
                if model_id in self._models:
                    self._models.move_to_end(model_id)
                    return self._models[model_id]
            model = self._check(model_id, self._loader(model_id))
            with self._lock:
                self._models[model_id] = model
                hub_models = [key for key in self._models if key != BUILTIN]
                for key in hub_models[: max(0, len(hub_models) - self.max_models)]:
                    del self._models[key]  # a request still running keeps its own reference
            return model

    @staticmethod
    def _check(model_id, pipe) -> LoadedModel:
        name = type(pipe).__name__
        try:
            with apg.guide(pipe, apg.CFG(1.0)):  # apg.guide refuses pipelines it cannot guide
                pass
        except ApgError as exc:
            raise ModelLoadError(f"model {model_id!r} ({name}) is not supported by apg.guide: {exc}") from None
        params = inspect.signature(pipe.__call__).parameters
        needs = [what for arg, what in UNSUPPORTED_INPUTS.items() if arg in params]
        if needs:
            raise ModelLoadError(f"model {model_id!r} ({name}) needs {' and '.join(needs)}. {SCOPE}.")
        class_conditional = "class_labels" in params and hasattr(pipe, "get_label_ids")
        if not class_conditional and "prompt" not in params:
            raise ModelLoadError(f"model {model_id!r} ({name}) takes neither a prompt nor class labels. {SCOPE}.")
        return LoadedModel(pipe, threading.Lock(), class_conditional, fitting_schedulers(pipe.scheduler))


# -- generation -----------------------------------------------------------------------------------
def seeded_config(name: str, seeds) -> dict:
    """Config that makes a scheduler's own noise follow the request's seeds, one per sample.

    DPM-Solver SDE draws its Brownian noise from `noise_sampler_seed` (a random one when unset), not from the
    pipeline's generator: without this, the two sides of a comparison would get different noise.
    """
    import diffusers

    takes_seed = "noise_sampler_seed" in inspect.signature(getattr(diffusers, name).__init__).parameters
    return {"noise_sampler_seed": list(seeds)} if takes_seed else {}


def _scheduler(model: LoadedModel, request: Request):
    """A fresh scheduler of the chosen kind for this request, configured like the model's own."""
    pipe, name = model.pipe, request.scheduler
    if name == DEFAULT_SCHEDULER:
        return pipe.scheduler
    if name not in model.schedulers:
        raise InputError(f"scheduler {name!r} does not fit this model ({type(pipe.scheduler).__name__}); "
                         f"choose one of {', '.join(model.schedulers)}")
    import diffusers

    with _quiet():
        return getattr(diffusers, name).from_config(pipe.scheduler.config, **seeded_config(name, request.seeds))


def _call_kwargs(model: LoadedModel, request: Request, notes: list) -> dict:
    """Pipeline arguments shared by both methods: same conditioning, same per-sample seeds."""
    pipe, n = model.pipe, len(request.seeds)
    params = inspect.signature(pipe.__call__).parameters
    if model.class_conditional:
        try:
            kwargs = {"class_labels": pipe.get_label_ids([request.prompt]) * n}  # one lookup, not one per seed
        except (KeyError, ValueError) as exc:
            raise InputError(f"{request.prompt!r} is not a class of this model: {exc}") from None
    else:
        kwargs = {"prompt": [request.prompt] * n}
    if request.negative_prompt:
        if "negative_prompt" in params:
            kwargs["negative_prompt"] = [request.negative_prompt] * n
        else:
            notes.append(f"negative prompt ignored: {type(pipe).__name__} takes none")
    for name in ("height", "width"):
        value = getattr(request, name)
        if value and name not in params:
            notes.append(f"{name} ignored: {type(pipe).__name__} has a fixed image size")
        elif value:
            kwargs[name] = value
    kwargs["num_inference_steps"] = request.steps
    kwargs["output_type"] = "pil"
    return kwargs


def _generators(seeds):
    # CPU generators, one per sample: the same noise for both methods and on any device.
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


@dataclass
class Result:
    """Both sides' images and their metrics, per seed in request order."""

    images: dict  # side -> [PIL]
    saturation: dict  # side -> [float]: the paper's metric, mean per-pixel HSV saturation
    clipping: dict  # side -> [float]: fraction of channel values at 0 or 255 (burnt or crushed)
    class_conditional: bool
    notes: list  # inputs the model ignored, one line each


def run(request: Request, cache: ModelCache, progress=None) -> Result:
    """Both sides on request.seeds with the same noise; ModelLoadError, InputError or the pipeline's error."""
    from apg.evaluation.metrics import per_image_clipping, per_image_saturation

    progress = progress or (lambda *args, **kwargs: None)
    progress(0.0, desc=f"loading {request.model}")
    model = cache.get(request.model)
    notes = []
    kwargs = _call_kwargs(model, request, notes)
    progress(0.0, desc=f"waiting for {request.model}")
    images = {}
    with model.lock:  # one run per pipeline at a time: guide() and the scheduler swap mutate it
        pipe = model.pipe
        own_scheduler, own_bar = pipe.scheduler, dict(getattr(pipe, "_progress_bar_config", {}))
        try:
            pipe.scheduler = _scheduler(model, request)
            for side in SIDES:
                setting = getattr(request, side)
                pipe.set_progress_bar_config(**{**own_bar, "desc": f"{side}: {setting.cls.label}"})
                with apg.guide(pipe, setting.build()):
                    images[side] = pipe(generator=_generators(request.seeds), **kwargs).images
        finally:
            pipe.scheduler = own_scheduler
            pipe.set_progress_bar_config(**own_bar)
    return Result(images,
                  {side: per_image_saturation(images[side]).tolist() for side in SIDES},
                  {side: per_image_clipping(images[side]).tolist() for side in SIDES},
                  model.class_conditional, notes)


# -- presentation ---------------------------------------------------------------------------------
def percent(fraction: float) -> str:
    """A clipped fraction for people: '0 %', '0.02 %', '12.3 %'."""
    value = 100 * fraction
    return "0 %" if value == 0 else f"{value:.2g} %" if value < 1 else f"{value:.1f} %"


def reproduction_code(request: Request, class_conditional: bool) -> str:
    """Python that reproduces a comparison outside the app; it leaves the images in `images`."""
    scheduler = None if request.scheduler == DEFAULT_SCHEDULER else request.scheduler
    classes = ([] if request.model == BUILTIN else ["DiffusionPipeline"]) + ([scheduler] if scheduler else [])
    lines = ["import torch"] + ([f"from diffusers import {', '.join(classes)}"] if classes else [])
    lines += ["", "import apg", "", f"seeds = {list(request.seeds)}"]
    if request.model == BUILTIN:
        lines.append("pipe = apg.load_builtin()")
    else:
        device = resolve_device(None)
        dtype = resolve_dtype(None, device)
        # dtype=, the keyword of the installed Diffusers (torch_dtype= is deprecated since 0.36).
        lines.append(f"pipe = DiffusionPipeline.from_pretrained({request.model!r}, dtype={dtype}).to({device.type!r})")
    if scheduler:
        seeded = ", noise_sampler_seed=seeds" if seeded_config(scheduler, request.seeds) else ""
        lines.append(f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config{seeded})")
    if class_conditional:
        condition = f"class_labels=pipe.get_label_ids([{request.prompt!r}]) * len(seeds)"
    else:
        condition = f"prompt=[{request.prompt!r}] * len(seeds)"
        if request.negative_prompt:
            condition += f", negative_prompt=[{request.negative_prompt!r}] * len(seeds)"
    size = "".join(f", {name}={getattr(request, name)}" for name in ("height", "width") if getattr(request, name))
    lines += ["", "methods = {"]
    for side in SIDES:
        setting = getattr(request, side)
        name = next((k for k, v in apg.INTERVALS.items() if tuple(v) == setting.interval), None)
        source = f"  # apg.INTERVALS[{name!r}]" if name else ""
        lines.append(f"    {side!r}: {setting.code()},{source}")
    lines += [
        "}",
        "images = {}",
        "for side, guidance in methods.items():",
        "    generator = [torch.Generator('cpu').manual_seed(seed) for seed in seeds]  # same noise for both",
        "    with apg.guide(pipe, guidance):",
        f"        images[side] = pipe({condition}{size}, num_inference_steps={request.steps},",
        "                            generator=generator, output_type='pil').images",
    ]
    return "\n".join(lines) + "\n"


def escape_markdown(text: str) -> str:
    """Text shown literally in Markdown ("CFG-Zero*" inside bold would end the bold)."""
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def summary(request: Request, result: Result) -> str:
    """Markdown: per side, the first seed's saturation and clipping, and the means over all seeds."""
    n, lines = len(request.seeds), []
    for side, arrow in zip(SIDES, ("◀", "▶")):
        sat, clip = result.saturation[side], result.clipping[side]
        name = escape_markdown(getattr(request, side).label())
        line = (f"**{side.capitalize()} {arrow} {name}** — "
                f"seed {request.seeds[0]}: saturation **{sat[0]:.3f}**, clipped **{percent(clip[0])}**")
        if n > 1:
            line += f"; mean over {n} seeds: saturation {np.mean(sat):.3f}, clipped {percent(float(np.mean(clip)))}"
        lines.append(line)
    return "  \n".join(lines)


def column_names(request: Request) -> tuple[str, str]:
    """Table names for the two sides: the method labels, with the side where both use the same method."""
    names = [getattr(request, side).cls.label for side in SIDES]
    if names[0] == names[1]:
        names = [f"{name} ({side})" for name, side in zip(names, SIDES)]
    return tuple(names)
