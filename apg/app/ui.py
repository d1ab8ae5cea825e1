"""The Gradio interface: widgets built from the library's registries, inputs bound to the request by name."""

from __future__ import annotations

import argparse
import hashlib
import html
import inspect
import io
import logging
import math
import os
import re
import socket
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

import apg
from apg import _options
from apg.errors import ApgError, CommandError, ModelLoadError

from . import logic
from .logic import SIDES

log = logging.getLogger("apg.app")

CACHE = logic.ModelCache()
# The results' PNGs, one file per distinct image. Gradio writes a returned PIL image to its cache in place,
# under a name made from its bytes, so two requests with the same image race and a reader can get a cut file;
# a path is copied with a rename instead.
OUTPUTS = tempfile.TemporaryDirectory(prefix="apg-app-")
PROGRESS = "progress"

# Stale results: a settings change after a result dims every output that result fills, and shows a note, until a
# Generate started after the last change succeeds. Counting edits (not a flag) keeps a change made while a run is
# in flight from being cleared by that run's success.
RESULT_IDS = ("slider", "summary", "gallery", "table", "code")
MARK_STALE = ("() => { const d = document.body.dataset; d.apgEdits = String(Number(d.apgEdits || 0) + 1);"
              " if (document.querySelector('#summary')?.innerText.trim()) document.body.classList.add('apg-stale'); }")
MARK_REQUESTED = "() => { document.body.dataset.apgRequested = document.body.dataset.apgEdits || '0'; }"
MARK_FRESH = ("() => { const d = document.body.dataset;"
              " document.body.classList.toggle('apg-stale', (d.apgEdits || '0') !== (d.apgRequested || '0')); }")
# Each help line shows one line (bounds first) and the whole text on hover: the controls fit a laptop screen.
HELP_TOOLTIPS = ("() => { const title = () => document.querySelectorAll('.info-text').forEach(e => e.title = e.textContent);"
                 " title(); new MutationObserver(title).observe(document.body, {childList: true, subtree: true}); }")

CSS = f"""
.pixelated img {{ image-rendering: pixelated; }}
#title {{ margin: 0; }}
.info-text {{ white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
/* Every row in view (no scroll box) and each caption in full, under its image rather than cut over it. */
#gallery, #gallery .gallery-container, #gallery .grid-wrap {{ height: auto !important; max-height: none !important;
  min-height: 0 !important; overflow: visible !important; }}
#gallery .thumbnail-item {{ aspect-ratio: auto; height: auto; display: flex; flex-direction: column; }}
#gallery .thumbnail-lg > img {{ aspect-ratio: 1; height: auto; }}
#gallery .caption-label {{ position: static; max-width: none; white-space: normal; overflow: visible;
  text-overflow: clip; border: none; border-radius: 0; opacity: 1; }}
/* Gradio adds a copy of each rule under its container's classes, which outranks a body-class rule: hence !important. */
#stale-note {{ display: none; }}
body.apg-stale #stale-note {{ display: block !important; }}
body.apg-stale :is({", ".join(f"#{name}" for name in RESULT_IDS)}) {{ opacity: 0.4; }}
"""
THEME = gr.themes.Soft(spacing_size="sm", text_size="sm")


def _message(title: str, exc: BaseException) -> gr.Error:
    """A toast with one line: Gradio 6's frontend shows "Error" whatever `title=` says, so the title leads the text.

    gr.Error renders HTML, and the text can hold user input (a prompt, a model id): it is escaped.
    """
    text = str(exc).replace("\n", " ")
    log.warning("%s: %s", title, text)  # one line in the terminal, no traceback
    return gr.Error(html.escape(f"{title}: {text}", quote=False), title=title, print_exception=False)


# -- labels ---------------------------------------------------------------------------------------
# The label on screen of each shared input; a side's inputs are named by input_label.
LABELS = {"model": "Model", "prompt": "Prompt or class", "negative_prompt": "Negative prompt", "seed": "Seed",
          "num_seeds": "Seeds", "steps": "Steps", "scheduler": "Scheduler", "guidance_scale": "Guidance scale w",
          "height": "Height", "width": "Width"}
SIDE_LABELS = {"interval": "σ interval", "sigma_low": "σ low", "sigma_high": "σ high"}


def knob_label(name: str) -> str:
    """'η (eta)', 'r (norm threshold)': a method knob's symbol and its keyword in words."""
    words = name.replace("_", " ")
    return f"{logic.SYMBOLS[name]} ({words})" if name in logic.SYMBOLS else words


def input_label(name: str) -> str:
    """The label on screen of the input `name`: 'Steps', 'Right side' (its method menu), 'Right side, σ low'."""
    side, _, own = name.partition("_")
    if side in SIDES:
        panel = f"{side.capitalize()} side"
        return panel if own == "method" else f"{panel}, {SIDE_LABELS.get(own) or knob_label(own)}"
    return LABELS[name]


def on_screen(text: str) -> str:
    """text with every input name written as an identifier ('right_sigma_low') replaced by its label on screen.

    Names without an underscore are words that read as their label ('steps'); quoted text, a user's value, stays.
    """
    names = sorted((re.escape(name) for name in logic.defaults() if "_" in name), key=len, reverse=True)
    pattern = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|\b(""" + "|".join(names) + r")\b")
    return pattern.sub(lambda match: match[1] or input_label(match[2]), text)


def png(image) -> str:
    """The image as a PNG file named by its content, written once and atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    path = Path(OUTPUTS.name) / f"{hashlib.sha256(data).hexdigest()}.png"
    if not path.exists():
        fd, staging = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    return str(path)


def compare_values(values: dict, progress=None):
    """The endpoint's work on inputs by name: (slider, summary, gallery, table, code); notes become warnings."""
    try:
        request = logic.parse_request(**values)
        result = logic.run(request, CACHE, progress)
    except ModelLoadError as exc:
        raise _message("Model not loaded", exc) from None
    except ApgError as exc:  # the app's refusals of an input, and apg's of a combination
        raise _message("Invalid settings", on_screen(str(exc))) from None
    except Exception as exc:  # a bug, out of memory, a broken pipeline: a message in the UI, the trace in the log
        log.exception("generation failed")
        raise gr.Error(html.escape(f"Generation failed: {type(exc).__name__}: {exc}", quote=False),
                       title="Generation failed", print_exception=False) from None
    for note in result.notes:
        gr.Warning(on_screen(note))
    names = logic.column_names(request)
    gallery, rows = [], []
    for i, seed in enumerate(request.seeds):
        row = [seed]
        for side, name in zip(SIDES, names):
            saturation, clipped = result.saturation[side][i], result.clipping[side][i]
            caption = f"#{seed} {name} · S {saturation:.3f} · clipped {logic.percent(clipped)}"
            gallery.append((png(result.images[side][i]), caption))
            row += [round(saturation, 4), round(100 * clipped, 2)]
        rows.append(row)
    headers = ["seed"] + [f"{name} {what}" for name in names for what in ("saturation", "clipped %")]
    slider = (png(result.images["left"][0]), png(result.images["right"][0]))
    code = logic.reproduction_code(request, result.class_conditional)
    return slider, logic.summary(request, result), gallery, pd.DataFrame(rows, columns=headers), code


def make_endpoint(names: list[str]):
    """`compare(**inputs)`: its signature (what Gradio and its API read) lists the inputs by name, with defaults."""
    defaults = logic.defaults()
    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name])
                  for name in names]
    parameters.append(inspect.Parameter(PROGRESS, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=gr.Progress(track_tqdm=True)))
    signature = inspect.Signature(parameters)

    def compare(*args, **kwargs):
        """Same seeds under the left and right method: slider pair, summary, gallery, table, code."""
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        progress = values.pop(PROGRESS)
        return compare_values(values, progress)

    compare.__signature__ = signature
    return compare


# -- widgets --------------------------------------------------------------------------------------
def _number(param: apg.Param, value, label: str, visible=True, **kwargs) -> gr.Number:
    """A number box: no slider, because Gradio's sliders clamp a typed value silently; bounds are checked once."""
    info = f"{logic.bounds_text(param)}; {param.help}"
    step = 1 if param.kind is int else 0.05 if math.isfinite(param.high) and param.high - param.low <= 2 else 0.5
    return gr.Number(value, label=label, info=info, step=step, visible=visible, **kwargs)


def _method_updates(method: str, side_params: dict, reset: bool):
    """Visibility (and, when the user picks a method, the class defaults) of a side's knobs and preset box."""
    own = {param.name: param.default for param in apg.METHODS[method].parameters}
    updates = [gr.update(visible=name in own, **({"value": own[name]} if reset and name in own else {}))
               for name in side_params]
    return updates + [gr.update(visible=_takes_presets(method))]


def _takes_presets(method: str) -> bool:
    """apg.PRESETS hold APG settings: offer them for methods whose knobs include every preset key."""
    own = {param.name for param in apg.METHODS[method].parameters}
    return all(set(preset) <= own for preset in apg.PRESETS.values())


def _interval_choices():
    choices = [("off", logic.INTERVAL_OFF), ("σ range (below)", logic.INTERVAL_CUSTOM)]
    return choices + [(f"{name}: σ ∈ ({low:g}, {high:g}]", name) for name, (low, high) in apg.INTERVALS.items()]


def _interval_updates(choice, high):
    """The σ boxes for the chosen interval: a preset's ends, or the custom range's, with an empty high as ∞.

    Gradio's number box sends 0 for a value it has never held (None at build time) while it shows nothing, so
    "custom" writes the high box back explicitly; 0 is never a valid high end (low >= 0 must lie below it).
    """
    if choice in apg.INTERVALS:
        low, high = apg.INTERVALS[choice]
        return gr.update(visible=True, value=low), gr.update(visible=True, value=None if high == math.inf else high)
    visible = choice != logic.INTERVAL_OFF
    return gr.update(visible=visible), gr.update(visible=visible, value=high or None)


def _method_panel(side: str, d: dict) -> dict:
    """One side's widgets, by input name."""
    side_params = logic.method_parameters()
    method = d[f"{side}_method"]
    own = {param.name for param in apg.METHODS[method].parameters}
    widgets = {}
    with gr.Group():
        with gr.Row():
            # A menu, not radio buttons: its height stays the same however many methods are registered.
            widgets[f"{side}_method"] = menu = gr.Dropdown(
                [(cls.label, key) for key, cls in apg.METHODS.items()], value=method,
                label=input_label(f"{side}_method"), elem_id=f"{side}-method", min_width=120)
            preset = gr.Dropdown(["custom", *apg.PRESETS], value="custom", label="APG preset", info="the paper's η, r, β",
                                 visible=_takes_presets(method), elem_id=f"{side}-preset", min_width=120)
        with gr.Row():  # two knobs a row in a laptop-wide column; hidden ones take no room
            for name, param in side_params.items():
                widgets[f"{side}_{name}"] = _number(param, d[f"{side}_{name}"], knob_label(name), visible=name in own,
                                                    elem_id=f"{side}-{name}", min_width=120)
        interval = widgets[f"{side}_interval"] = gr.Dropdown(
            _interval_choices(), value=d[f"{side}_interval"], label=SIDE_LABELS["interval"],
            info="guide only where low < σ ≤ high, σ = σ_t/α_t (EDM); elsewhere the conditional prediction",
            elem_id=f"{side}-interval")
        with gr.Row():
            low = widgets[f"{side}_sigma_low"] = gr.Number(
                d[f"{side}_sigma_low"], label=SIDE_LABELS["sigma_low"], step=0.01, visible=False, min_width=80,
                elem_id=f"{side}-sigma-low")
            high = widgets[f"{side}_sigma_high"] = gr.Number(
                d[f"{side}_sigma_high"], label=SIDE_LABELS["sigma_high"], placeholder="empty: ∞", step=0.01,
                visible=False, min_width=80, elem_id=f"{side}-sigma-high")
    knobs = [widgets[f"{side}_{name}"] for name in side_params]
    private = dict(api_visibility="private", queue=False, show_progress="hidden")
    menu.change(lambda m: _method_updates(m, side_params, reset=False), menu, [*knobs, preset], **private)
    menu.input(lambda m: _method_updates(m, side_params, reset=True), menu, [*knobs, preset], **private)
    preset_keys = [name for name in side_params if any(name in p for p in apg.PRESETS.values())]

    def apply_preset(name):
        if name == "custom":
            return [gr.update()] * (1 + len(preset_keys))
        return ["apg", *(apg.PRESETS[name][key] for key in preset_keys)]

    preset.input(apply_preset, preset, [menu, *(widgets[f"{side}_{key}"] for key in preset_keys)], **private)
    for knob in knobs:  # a hand-set value is no longer the preset
        knob.input(lambda: "custom", None, preset, **private)
    interval.input(_interval_updates, [interval, high], [low, high], **private)
    for box in (low, high):
        box.input(lambda: logic.INTERVAL_CUSTOM, None, interval, **private)
    return widgets


def scheduler_choices(model: logic.LoadedModel) -> list[tuple[str, str]]:
    """The scheduler menu for a loaded model: its own first, then those that fit it (logic.fitting_schedulers)."""
    own = type(model.pipe.scheduler).__name__.removesuffix("Scheduler")
    return [(f"{own} (own)" if name == logic.DEFAULT_SCHEDULER else name.removesuffix("Scheduler"), name)
            for name in model.schedulers]


def scheduler_menu(model_id: str, current: str):
    """The scheduler menu once `model_id` is loaded; a choice that does not fit the new model falls back to its own."""
    try:
        model = CACHE.get((model_id or "").strip() or logic.BUILTIN)
    except ModelLoadError as exc:
        raise _message("Model not loaded", exc) from None
    value = current if current in model.schedulers else logic.DEFAULT_SCHEDULER
    return gr.update(choices=scheduler_choices(model), value=value)


TITLE = ("**CFG vs APG, same seeds.** Two guidance rules on the same noise, so the only difference is the rule "
         "(APG: Sadat et al., ICLR 2025). Hover a help line to read it all.")
ABOUT = ("**Saturation** is the paper's metric: the mean over pixels of (max − min) / max of the RGB values. "
         "**Clipped** is the share of channel values at 0 or 255, burnt or crushed; a burnt pixel has saturation "
         "≈ 0, so read the two together.")


def build_demo(concurrency_limit: int = 4) -> gr.Blocks:
    """The Blocks app; `compare` is its named API endpoint, with every input by name.

    Laid out for a laptop screen (1366 x 768 and up): the shared settings in one row, the two sides' methods left and
    right of Generate and the first seed's comparison; the gallery, the table and the code below.
    """
    from apg.builtin import CIFAR10_CLASSES

    d = logic.defaults()
    w = {}  # input name -> component
    narrow = dict(min_width=80, scale=1)
    with gr.Blocks(title="apg: CFG vs APG") as demo:
        gr.Markdown(TITLE, elem_id="title")
        with gr.Row(elem_id="settings"):
            w["model"] = gr.Textbox(d["model"], label=LABELS["model"], elem_id="model", scale=2, min_width=160,
                                    info="'builtin' (CIFAR-10 toy model, offline) or a hub id / local folder of a "
                                         f"pipeline apg.guide supports. {logic.SCOPE}.")
            w["prompt"] = gr.Dropdown(list(CIFAR10_CLASSES), value=d["prompt"], allow_custom_value=True,
                                      label=LABELS["prompt"], info="a class name for class-conditional models",
                                      scale=2, min_width=130)
            w["negative_prompt"] = gr.Textbox(d["negative_prompt"], label=LABELS["negative_prompt"],
                                              info="text-to-image models", scale=2, min_width=145)
            w["seed"] = _number(logic.SEED, d["seed"], LABELS["seed"], elem_id="seed", **narrow)
            w["num_seeds"] = _number(logic.NUM_SEEDS, d["num_seeds"], LABELS["num_seeds"], elem_id="num-seeds",
                                     **narrow)
            w["steps"] = _number(logic.STEPS, d["steps"], LABELS["steps"], elem_id="steps", **narrow)
            # Custom values pass the menu so that API callers can name any scheduler; the request is checked.
            w["scheduler"] = gr.Dropdown(scheduler_choices(CACHE.get(d["model"])), value=d["scheduler"],
                                         label=LABELS["scheduler"], info="the model's own, then those that fit it",
                                         allow_custom_value=True, elem_id="scheduler", scale=2, min_width=175)
            w["guidance_scale"] = _number(apg.SCALE, d["guidance_scale"], LABELS["guidance_scale"],
                                          elem_id="guidance-scale", scale=1, min_width=155)
            for name in ("height", "width"):
                w[name] = gr.Number(d[name], label=LABELS[name], info="0: the model's; text-to-image models", step=8,
                                    elem_id=name, **narrow)
        with gr.Row(elem_id="workspace"):
            with gr.Column(scale=3, min_width=260):
                w.update(_method_panel("left", d))
            with gr.Column(scale=5, min_width=360):
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Markdown("**⚠ Settings changed: the dimmed results are for the previous settings.**",
                            elem_id="stale-note")
                slider = gr.ImageSlider(label="Left ◀ ▶ Right (first seed)", format="png", type="filepath",
                                        elem_id="slider", elem_classes=["pixelated"], max_height=360,
                                        interactive=False)
                summary = gr.Markdown(elem_id="summary")
            with gr.Column(scale=3, min_width=260):
                w.update(_method_panel("right", d))
        gallery = gr.Gallery(label="All seeds, left then right (#seed method · S saturation · clipped)",
                             format="png", columns=8, height="auto", object_fit="contain",
                             interactive=False, allow_preview=True, elem_id="gallery", elem_classes=["pixelated"])
        with gr.Row():
            table = gr.Dataframe(label="Saturation and clipped values per image", interactive=False, elem_id="table")
            code = gr.Code(language="python", label="Copy as code", interactive=False, wrap_lines=True,
                           elem_id="code")
        gr.Markdown(ABOUT, elem_id="about")
        missing = set(d) - set(w)
        assert not missing, f"inputs without a widget: {sorted(missing)}"
        names = list(w)
        # Up to concurrency_limit requests run at once; each model's lock lets one of them use a pipeline.
        generate.click(None, None, None, js=MARK_REQUESTED, queue=False, api_visibility="private")
        event = generate.click(make_endpoint(names), [w[name] for name in names], [slider, summary, gallery, table, code],
                               api_name="compare", concurrency_limit=concurrency_limit, concurrency_id="compare",
                               show_progress_on=[slider])
        event.success(None, None, None, js=MARK_FRESH, queue=False, api_visibility="private")  # a failed run keeps the mark
        for component in w.values():
            component.change(None, None, None, js=MARK_STALE, queue=False, api_visibility="private")
        for load in (w["model"].blur, w["model"].submit):
            load(scheduler_menu, [w["model"], w["scheduler"]], w["scheduler"], api_visibility="private",
                 show_progress="minimal")
    return demo.queue(default_concurrency_limit=1)


def launch(demo: gr.Blocks, **kwargs):
    """demo.launch with the app's look; kwargs go to Blocks.launch (server_name, server_port, share, ...)."""
    return demo.launch(css=CSS, theme=THEME, js=HELP_TOOLTIPS, **kwargs)


def _port(text: str) -> int:
    port = _options.at_least(1)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be a port in [1, 65535], got {port}")
    return port


def parse_args(argv=None):
    parser = _options.ArgumentParser(prog="apg app", description="The Gradio app: two guidance methods side by side.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=7860, help="port to serve on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    _options.add_traceback_option(parser)
    return parser.parse_args(argv)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _serve(args):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_demo()
    try:
        launch(demo, server_name=args.host, server_port=args.port, share=args.share)
    except OSError:
        if not _port_in_use(args.host, args.port):
            raise
        raise CommandError(f"port {args.port} on {args.host} is in use; pass another one with --port "
                           f"(e.g. --port {args.port + 1}, or `make run PORT={args.port + 1}`)") from None


def main(argv=None):
    """Launch the app and serve until interrupted; a bad or busy port is one line naming --port, exit code 2."""
    args = parse_args(argv)
    code = _options.run_guarded("apg app", lambda: _serve(args), args.traceback)
    if code:
        raise SystemExit(code)
