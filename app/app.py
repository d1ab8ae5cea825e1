"""Gradio app: the same seeds under two guidance methods (CFG, APG, momentum CFG), side by side.

python app/app.py [--host 127.0.0.1] [--port 7860] [--share]
"""

from __future__ import annotations

import argparse
import html
import inspect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import gradio as gr
import numpy as np
import torch

import apg
from apg.builtin import CIFAR10_CLASSES
from apg.evaluation import per_image_saturation
from apg.loading import BUILTIN, load_pipeline

log = logging.getLogger("apg.app")

METHODS = ("CFG", "APG", "Momentum CFG")
SHORT = {"CFG": "CFG", "APG": "APG", "Momentum CFG": "M-CFG"}  # gallery captions are narrow
# Display name -> Diffusers scheduler class (those apg.guide supports); "default" keeps the model's own.
SCHEDULERS = {
    "default": None,
    "DDIM": "DDIMScheduler",
    "DDPM": "DDPMScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler ancestral": "EulerAncestralDiscreteScheduler",
    "Heun": "HeunDiscreteScheduler",
    "LMS": "LMSDiscreteScheduler",
    "PNDM": "PNDMScheduler",
    "DPM-Solver++ 2M": "DPMSolverMultistepScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "FlowMatch Euler": "FlowMatchEulerDiscreteScheduler",
}
# Bounds on every input: (low, high), inclusive.
BOUNDS = {
    "seed": (0, 2**32 - 1),
    "num_seeds": (1, 8),
    "steps": (1, 150),
    "guidance_scale": (0.0, 30.0),
    "eta": (0.0, 1.0),
    "norm_threshold": (0.0, 100.0),
    "momentum": (-1.0, 1.0),
    "size": (64, 2048),  # height and width of text-to-image models; 0 keeps the model's default
}
MAX_PROMPT_CHARS = 1000
MAX_CACHED_MODELS = 2  # hub/local models kept loaded besides the built-in one (each can be GBs)

DEFAULTS = dict(
    model=BUILTIN, prompt="cat", seed=0, num_seeds=4, steps=25, scheduler="default", guidance_scale=7.5,
    height=0, width=0,
    left_method="CFG", left_eta=0.0, left_norm_threshold=0.0, left_momentum=0.0,
    right_method="APG", **{f"right_{key}": value for key, value in apg.PRESETS["sdxl"].items()},
)

INPUT_NAMES = tuple(DEFAULTS)  # compare()'s inputs, in order


# -- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One side of the comparison: a method name and its parameters."""

    name: str
    eta: float
    norm_threshold: float
    momentum: float

    def guidance(self, guidance_scale: float) -> apg.Guidance:
        """A fresh guidance object: each request owns its momentum state."""
        if self.name == "CFG":
            return apg.CFG(guidance_scale)
        if self.name == "APG":
            return apg.APG(guidance_scale, eta=self.eta, norm_threshold=self.norm_threshold, momentum=self.momentum)
        return apg.MomentumCFG(guidance_scale, momentum=self.momentum, norm_threshold=self.norm_threshold)


@dataclass(frozen=True)
class Request:
    """Validated inputs of one comparison."""

    model: str
    prompt: str
    seeds: tuple[int, ...]
    steps: int
    scheduler: str
    guidance_scale: float
    height: int
    width: int
    left: Method
    right: Method


def _text(value) -> str:
    """User-supplied text made safe for gr.Error, which renders HTML (quotes stay readable)."""
    return html.escape(str(value), quote=False)


def _number(name, value, bounds, integer=False):
    """value as a float (or int) inside bounds (inclusive), else a gr.Error naming the input."""
    low, high = bounds
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {_text(repr(value))}") from None
    if not np.isfinite(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be between {low} and {high}, got {_text(repr(value))}")
    if integer:
        if number != int(number):
            raise gr.Error(f"{name} must be a whole number, got {_text(repr(value))}")
        return int(number)
    return number


def _size(name, value):
    size = _number(name, value, BOUNDS["size"], integer=True) if value not in (0, 0.0, None) else 0
    if size % 8:
        raise gr.Error(f"{name} must be a multiple of 8 (or 0 for the model's default), got {size}")
    return size


def _method(side, name, eta, norm_threshold, momentum):
    if name not in METHODS:
        raise gr.Error(f"{side}_method must be one of {', '.join(METHODS)}, got {_text(repr(name))}")
    values = {key: _number(f"{side}_{key}", value, BOUNDS[key])
              for key, value in (("eta", eta), ("norm_threshold", norm_threshold), ("momentum", momentum))}
    return Method(name, **values)


def parse_request(model, prompt, seed, num_seeds, steps, scheduler, guidance_scale, height, width,
                  left_method, left_eta, left_norm_threshold, left_momentum,
                  right_method, right_eta, right_norm_threshold, right_momentum) -> Request:
    """Check every input against its bounds; a violation is a gr.Error naming the input and the value."""
    model = (model or "").strip() or BUILTIN
    if len(model) > 300:
        raise gr.Error(f"model must be a hub id or a local path of at most 300 characters, got {len(model)}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise gr.Error("prompt (or class) must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"prompt must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
    if scheduler not in SCHEDULERS:
        raise gr.Error(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {_text(repr(scheduler))}")
    seed = _number("seed", seed, BOUNDS["seed"], integer=True)
    num_seeds = _number("num_seeds", num_seeds, BOUNDS["num_seeds"], integer=True)
    if seed + num_seeds - 1 > BOUNDS["seed"][1]:
        raise gr.Error(f"seed + num_seeds - 1 must be at most {BOUNDS['seed'][1]}, got {seed + num_seeds - 1}")
    return Request(
        model=model,
        prompt=prompt.strip(),
        seeds=tuple(range(seed, seed + num_seeds)),
        steps=_number("steps", steps, BOUNDS["steps"], integer=True),
        scheduler=scheduler,
        guidance_scale=_number("guidance_scale", guidance_scale, BOUNDS["guidance_scale"]),
        height=_size("height", height),
        width=_size("width", width),
        left=_method("left", left_method, left_eta, left_norm_threshold, left_momentum),
        right=_method("right", right_method, right_eta, right_norm_threshold, right_momentum),
    )


# -- models ---------------------------------------------------------------------------------------
class ModelLoadError(RuntimeError):
    """A model could not be loaded or is not one that apg.guide supports."""


@dataclass
class LoadedModel:
    """A cached pipeline and the lock that serialises its use (apg.guide mutates the pipeline)."""

    pipe: object
    lock: threading.Lock
    class_conditional: bool


def _device_and_dtype():
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if torch.backends.mps.is_available():
        return "mps", torch.float16
    return "cpu", torch.float32


def _load_pipeline(model_id):
    # Never trust_remote_code (apg.loading): only pipelines that ship with Diffusers are loaded.
    # The built-in model is tiny: it stays on the CPU in float32.
    return load_pipeline(model_id) if model_id == BUILTIN else load_pipeline(model_id, *_device_and_dtype())


class ModelCache:
    """Loads pipelines lazily, once per id, and keeps the most recently used ones."""

    def __init__(self, max_models=MAX_CACHED_MODELS, loader=_load_pipeline):
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
            model = self._load(model_id)
            with self._lock:
                self._models[model_id] = model
                hub_models = [key for key in self._models if key != BUILTIN]
                for key in hub_models[: max(0, len(hub_models) - self.max_models)]:
                    del self._models[key]  # a request still running keeps its own reference
            return model

    def _load(self, model_id):
        try:
            pipe = self._loader(model_id)
        except Exception as exc:  # offline, unknown id, missing files, bad config: all end here
            log.exception("loading %r failed", model_id)
            raise ModelLoadError(f"could not load model {model_id!r}: {type(exc).__name__}: {exc}") from exc
        try:
            with apg.guide(pipe, apg.CFG(1.0)):  # apg.guide refuses pipelines it cannot guide
                pass
        except (ValueError, TypeError) as exc:
            name = type(pipe).__name__
            raise ModelLoadError(f"model {model_id!r} ({name}) is not supported by apg.guide: {exc}") from exc
        params = inspect.signature(pipe.__call__).parameters
        class_conditional = "class_labels" in params and hasattr(pipe, "get_label_ids")
        if not class_conditional and "prompt" not in params:
            raise ModelLoadError(f"model {model_id!r} ({type(pipe).__name__}) takes neither a prompt nor class labels")
        return LoadedModel(pipe, threading.Lock(), class_conditional)


# -- generation -----------------------------------------------------------------------------------
def _scheduler(pipe, name):
    """A fresh scheduler of the chosen kind for this request, configured like the model's own."""
    if SCHEDULERS[name] is None:
        return pipe.scheduler
    compatible = {cls.__name__ for cls in pipe.scheduler.compatibles} | {type(pipe.scheduler).__name__}
    if SCHEDULERS[name] not in compatible:
        usable = [key for key, cls in SCHEDULERS.items() if cls is None or cls in compatible]
        raise gr.Error(f"scheduler {name!r} does not fit this model ({type(pipe.scheduler).__name__}); "
                       f"choose one of {', '.join(usable)}")
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def _call_kwargs(model: LoadedModel, request: Request) -> dict:
    """Pipeline arguments shared by both methods: same conditioning, same per-sample seeds."""
    pipe, n = model.pipe, len(request.seeds)
    if model.class_conditional:
        try:
            kwargs = {"class_labels": pipe.get_label_ids([request.prompt] * n)}
        except (KeyError, ValueError) as exc:
            raise gr.Error(f"{_text(repr(request.prompt))} is not a class of this model: {_text(str(exc))}") from None
    else:
        kwargs = {"prompt": [request.prompt] * n}
    params = inspect.signature(pipe.__call__).parameters
    for name in ("height", "width"):
        value = getattr(request, name)
        if value and name not in params:
            gr.Warning(f"{name} is ignored: {type(pipe).__name__} has a fixed image size")
        elif value:
            kwargs[name] = value
    kwargs["num_inference_steps"] = request.steps
    kwargs["output_type"] = "pil"
    return kwargs


def _generators(seeds):
    # CPU generators, one per sample: the same noise for both methods and on any device.
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def run(request: Request, cache: ModelCache, progress=None) -> dict:
    """Both methods on request.seeds: {"left"/"right": [PIL], "left_saturation"/...: [float], "class_conditional"}."""
    progress = progress or (lambda *args, **kwargs: None)
    progress(0.0, desc=f"loading {request.model}")
    model = cache.get(request.model)
    kwargs = _call_kwargs(model, request)
    progress(0.0, desc=f"waiting for {request.model}")
    result = {}
    with model.lock:  # one run per pipeline at a time: guide() and the scheduler swap mutate it
        pipe = model.pipe
        own_scheduler, own_bar = pipe.scheduler, dict(getattr(pipe, "_progress_bar_config", {}))
        pipe.scheduler = _scheduler(pipe, request.scheduler)
        try:
            for side in ("left", "right"):
                method = getattr(request, side)
                pipe.set_progress_bar_config(**{**own_bar, "desc": f"{side}: {method.name}"})
                with apg.guide(pipe, method.guidance(request.guidance_scale)):
                    result[side] = pipe(generator=_generators(request.seeds), **kwargs).images
        finally:
            pipe.scheduler = own_scheduler
            pipe.set_progress_bar_config(**own_bar)
    for side in ("left", "right"):
        result[f"{side}_saturation"] = per_image_saturation(result[side]).tolist()  # the paper's metric
    result["class_conditional"] = model.class_conditional
    return result


# -- presentation ---------------------------------------------------------------------------------
def guidance_code(method: Method, guidance_scale: float) -> str:
    """The Python expression that builds this side's guidance object (its repr, qualified)."""
    return f"apg.{method.guidance(guidance_scale)!r}"


def reproduction_code(request: Request, class_conditional: bool) -> str:
    """Python that reproduces a comparison outside the app; it leaves the images in `images`."""
    classes = ([] if request.model == BUILTIN else ["DiffusionPipeline"]) + (
        [SCHEDULERS[request.scheduler]] if request.scheduler != "default" else [])
    lines = ["import torch"] + ([f"from diffusers import {', '.join(classes)}"] if classes else [])
    lines += ["", "import apg", ""]
    if request.model == BUILTIN:
        lines.append("pipe = apg.load_builtin()")
    else:
        device, dtype = _device_and_dtype()
        lines.append(f"pipe = DiffusionPipeline.from_pretrained({request.model!r}, torch_dtype={dtype}).to({device!r})")
    if request.scheduler != "default":
        lines.append(f"pipe.scheduler = {SCHEDULERS[request.scheduler]}.from_config(pipe.scheduler.config)")
    seeds = list(request.seeds)
    if class_conditional:
        condition = f"class_labels=pipe.get_label_ids([{request.prompt!r}] * len(seeds))"
    else:
        condition = f"prompt=[{request.prompt!r}] * len(seeds)"
    size = "".join(f", {name}={getattr(request, name)}" for name in ("height", "width") if getattr(request, name))
    lines += [
        "",
        f"seeds = {seeds}",
        "methods = {",
        f"    'left': {guidance_code(request.left, request.guidance_scale)},",
        f"    'right': {guidance_code(request.right, request.guidance_scale)},",
        "}",
        "images = {}",
        "for side, guidance in methods.items():",
        "    generator = [torch.Generator('cpu').manual_seed(seed) for seed in seeds]  # same noise for both",
        "    with apg.guide(pipe, guidance):",
        f"        images[side] = pipe({condition}{size}, num_inference_steps={request.steps},",
        "                            generator=generator, output_type='pil').images",
    ]
    return "\n".join(lines) + "\n"


SYMBOLS = {"guidance_scale": "w", "eta": "η", "norm_threshold": "r", "momentum": "β"}


def _label(method: Method, guidance_scale: float) -> str:
    """'APG w=7.5 η=0 r=15 β=-0.5': the method and the parameters it uses."""
    config = method.guidance(guidance_scale).to_dict()
    return " ".join([method.name] + [f"{SYMBOLS[key]}={value:g}" for key, value in config.items() if key != "type"])


def _summary(request: Request, result: dict) -> str:
    left, right = _label(request.left, request.guidance_scale), _label(request.right, request.guidance_scale)
    first, mean = "seed {}: saturation **{:.3f}**", "mean over {} seeds: {:.3f}"
    n = len(request.seeds)
    return (
        f"**Left ◀ {left}** — {first.format(request.seeds[0], result['left_saturation'][0])}"
        + (f", {mean.format(n, np.mean(result['left_saturation']))}" if n > 1 else "")
        + f"  \n**Right ▶ {right}** — {first.format(request.seeds[0], result['right_saturation'][0])}"
        + (f", {mean.format(n, np.mean(result['right_saturation']))}" if n > 1 else "")
    )


CACHE = ModelCache()


def compare(model, prompt, seed, num_seeds, steps, scheduler, guidance_scale, height, width,
            left_method, left_eta, left_norm_threshold, left_momentum,
            right_method, right_eta, right_norm_threshold, right_momentum,
            progress=gr.Progress(track_tqdm=True)):
    """Same seeds under the left and right method: slider pair, gallery, saturation table, summary, code."""
    request = parse_request(model, prompt, seed, num_seeds, steps, scheduler, guidance_scale, height, width,
                            left_method, left_eta, left_norm_threshold, left_momentum,
                            right_method, right_eta, right_norm_threshold, right_momentum)
    try:
        result = run(request, CACHE, progress)
    except gr.Error:
        raise
    except ModelLoadError as exc:
        raise gr.Error(_text(str(exc)), title="Model not loaded") from None
    except (ValueError, TypeError) as exc:  # apg and Diffusers reject bad combinations with these
        raise gr.Error(_text(f"{type(exc).__name__}: {exc}"), title="Invalid settings") from None
    except Exception as exc:  # out of memory, a broken pipeline, ...: a message, never a traceback
        log.exception("generation failed")
        raise gr.Error(_text(f"generation failed: {type(exc).__name__}: {exc}")) from None
    gallery, table = [], []
    for i, seed in enumerate(request.seeds):
        sat_left, sat_right = result["left_saturation"][i], result["right_saturation"][i]
        gallery.append((result["left"][i], f"#{seed} {SHORT[request.left.name]} · {sat_left:.3f}"))
        gallery.append((result["right"][i], f"#{seed} {SHORT[request.right.name]} · {sat_right:.3f}"))
        table.append([seed, round(sat_left, 4), round(sat_right, 4)])
    code = reproduction_code(request, result["class_conditional"])
    return (result["left"][0], result["right"][0]), _summary(request, result), gallery, table, code


# -- UI -------------------------------------------------------------------------------------------
def _preset_values(preset):
    """Method and (eta, r, beta) for a preset; the paper's presets are APG settings."""
    if preset == "custom":
        return gr.update(), gr.update(), gr.update(), gr.update()
    values = apg.PRESETS[preset]
    return "APG", values["eta"], values["norm_threshold"], values["momentum"]


def _method_visibility(method):
    """Show only the parameters the method uses (CFG: none; momentum CFG: r and beta)."""
    return (gr.update(visible=method == "APG"), gr.update(visible=method != "CFG"),
            gr.update(visible=method != "CFG"), gr.update(visible=method == "APG"))


def _method_panel(side):
    d = {key[len(side) + 1:]: value for key, value in DEFAULTS.items() if key.startswith(side + "_")}
    values = {key: d[key] for key in ("eta", "norm_threshold", "momentum")}
    preset_value = next((name for name, preset in apg.PRESETS.items() if preset == values), "custom")
    with gr.Group():
        method = gr.Radio(list(METHODS), value=d["method"], label=f"{side.capitalize()} method",
                          elem_id=f"{side}-method")
        preset = gr.Dropdown(["custom", *apg.PRESETS], value=preset_value, label="APG preset (paper)",
                             visible=d["method"] == "APG", elem_id=f"{side}-preset")
        eta = gr.Slider(*BOUNDS["eta"], value=d["eta"], step=0.05, label="η (parallel weight)",
                        visible=d["method"] == "APG")
        norm_threshold = gr.Slider(*BOUNDS["norm_threshold"], value=d["norm_threshold"], step=0.5,
                                   label="r (norm threshold, 0 = off)", visible=d["method"] != "CFG")
        momentum = gr.Slider(*BOUNDS["momentum"], value=d["momentum"], step=0.05, label="β (momentum)",
                             visible=d["method"] != "CFG")
    method.change(_method_visibility, method, [eta, norm_threshold, momentum, preset], api_visibility="private")
    preset.input(_preset_values, preset, [method, eta, norm_threshold, momentum], api_visibility="private")
    for slider in (eta, norm_threshold, momentum):  # a hand-set value is no longer the preset
        slider.input(lambda: "custom", None, preset, api_visibility="private")
    return [method, eta, norm_threshold, momentum]


THEME = gr.themes.Soft()
CSS = """
.pixelated img { image-rendering: pixelated; }
#title { margin-bottom: 0; }
"""


def build_demo(concurrency_limit: int = 4) -> gr.Blocks:
    """The Blocks app; `compare` is its named API endpoint."""
    with gr.Blocks(title="apg: CFG vs APG") as demo:
        gr.Markdown(
            "# CFG vs APG, same seed\n"
            "Adaptive Projected Guidance (Sadat et al., ICLR 2025) against classifier-free guidance. "
            "Both sides use the same seeds, so the only difference is the guidance rule. "
            "Drag the slider to compare; saturation is the paper's metric (mean of (max−min)/max per pixel).",
            elem_id="title",
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                model = gr.Textbox(DEFAULTS["model"], label="Model",
                                   info="'builtin' (CIFAR-10 toy model, offline) or a hub id / local path of a "
                                        "pipeline apg.guide supports (SD, SDXL, SD3, PixArt, Sana, DiT, Flux)")
                prompt = gr.Dropdown(list(CIFAR10_CLASSES), value=DEFAULTS["prompt"], allow_custom_value=True,
                                     label="Prompt or class", info="a class name for class-conditional models")
                with gr.Row():
                    seed = gr.Number(DEFAULTS["seed"], label="Seed", precision=0)
                    num_seeds = gr.Slider(*BOUNDS["num_seeds"], value=DEFAULTS["num_seeds"], step=1,
                                          label="Seeds in gallery")
                with gr.Row():
                    steps = gr.Slider(*BOUNDS["steps"], value=DEFAULTS["steps"], step=1, label="Steps")
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=DEFAULTS["scheduler"], label="Scheduler")
                guidance_scale = gr.Slider(*BOUNDS["guidance_scale"], value=DEFAULTS["guidance_scale"], step=0.5,
                                           label="Guidance scale w (both sides)")
                with gr.Accordion("Image size (text-to-image models)", open=False):
                    with gr.Row():
                        height = gr.Number(DEFAULTS["height"], label="Height (0 = model default)", precision=0)
                        width = gr.Number(DEFAULTS["width"], label="Width (0 = model default)", precision=0)
                with gr.Row():
                    with gr.Column(min_width=150):
                        left = _method_panel("left")
                    with gr.Column(min_width=150):
                        right = _method_panel("right")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3, min_width=360):
                slider = gr.ImageSlider(label="Left ◀ ▶ Right (first seed)", format="png", type="pil",
                                        elem_id="slider", elem_classes=["pixelated"], max_height=480,
                                        interactive=False)
                summary = gr.Markdown(elem_id="summary")
                gallery = gr.Gallery(label="All seeds, left and right (#seed method · saturation)", format="png",
                                     columns=4, height="auto", object_fit="contain", interactive=False,
                                     elem_id="gallery", elem_classes=["pixelated"])
                table = gr.Dataframe(headers=["seed", "left saturation", "right saturation"],
                                     datatype=["number", "number", "number"], label="Saturation per image",
                                     interactive=False)
                code = gr.Code(language="python", label="Copy as code", interactive=False, elem_id="code")
        inputs = [model, prompt, seed, num_seeds, steps, scheduler, guidance_scale, height, width, *left, *right]
        # Up to concurrency_limit requests run at once; each model's lock lets one of them use a pipeline.
        generate.click(compare, inputs, [slider, summary, gallery, table, code], api_name="compare",
                       concurrency_limit=concurrency_limit, concurrency_id="compare", show_progress_on=[slider])
    return demo.queue(default_concurrency_limit=1)


def launch(demo: gr.Blocks, **kwargs):
    """demo.launch with the app's look; kwargs go to Blocks.launch (server_name, server_port, share, ...)."""
    return demo.launch(css=CSS, theme=THEME, **kwargs)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    launch(build_demo(), server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
