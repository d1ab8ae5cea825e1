"""The Gradio app (apg.app): its logic and endpoint called directly, then a launched app through gradio_client."""

import concurrent.futures
import logging
import math
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import apg  # noqa: E402
from apg.app import logic, ui  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(steps=6, num_seeds=2)  # small runs: the whole file shares two CPU cores with other work


def compare(**inputs):
    """The endpoint, called as Gradio calls it (positionally, in its signature's order)."""
    endpoint = ui.make_endpoint(list(logic.defaults()))
    return endpoint(**inputs)


def reference_saturation(image):
    """(max - min) / max per pixel (0 where max = 0), mean over pixels; float64, from the PNG pixels."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    high, low = rgb.max(-1), rgb.min(-1)
    return float(np.where(high > 0, (high - low) / np.where(high > 0, high, 1), 0).mean())


def reference_clipping(image):
    """Share of uint8 channel values at 0 or 255."""
    values = np.asarray(image.convert("RGB"))
    return float(((values == 0) | (values == 255)).mean())


def image_of(file):
    return file if isinstance(file, Image.Image) else Image.open(local_path(file))


def local_path(file):
    """Path of an output file; the client returns the server's FileData (same machine)."""
    return Path(file if isinstance(file, (str, Path)) else file.path if hasattr(file, "path") else file["path"])


def pixels(image):
    if not isinstance(image, Image.Image):
        image = Image.open(local_path(image))
    return np.asarray(image, dtype=np.int16)


def test_import_apg_does_not_import_gradio():
    code = "import sys, apg; assert 'gradio' not in sys.modules and 'apg.app' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_command_line_binds_this_machine_only_unless_told():
    args = ui.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    args = ui.parse_args(["--host", "0.0.0.0", "--port", "8000", "--share"])
    assert (args.host, args.port, args.share) == ("0.0.0.0", 8000, True)


def test_busy_port_is_one_line_naming_the_port_option():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run([sys.executable, "app/app.py", "--port", str(port)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("apg app:")]
    assert "--port" in line and str(port) in line, done.stderr
    assert "Traceback" not in done.stderr and "OSError" not in done.stderr


# -- validation ------------------------------------------------------------------------------------
def _library_bound_cases():
    """Just outside each library bound of every method's knobs and of the scale: refused, naming the input."""
    cases = [("guidance_scale", apg.SCALE.low - 0.5, {}), ("guidance_scale", math.inf, {})]
    for key, cls in apg.METHODS.items():
        for param in cls.parameters:
            outside = [param.low - (1 if param.kind is int else 0.5)]
            if math.isfinite(param.high):
                outside.append(param.high + (1 if param.kind is int else 0.5))
            if param.high == math.inf:
                outside.append(math.inf)  # unbounded, yet finite
            cases += [(f"right_{param.name}", value, {"right_method": key}) for value in outside]
    return cases


def assert_names_labels_only(message, label):
    """The toast names the label on screen and no input by its internal name (right_sigma_low, num_seeds)."""
    assert label in message, message
    internal = [name for name in logic.defaults() if "_" in name and re.search(rf"\b{re.escape(name)}\b", message)]
    assert not internal, message


@pytest.mark.parametrize("name, value, extra", _library_bound_cases())
def test_library_bounds_are_the_apps(name, value, extra):
    with pytest.raises(gr.Error) as info:
        compare(**{name: value, **extra})
    message = info.value.message
    assert message.startswith("Invalid settings: ") and f"{value!r}" in message
    assert_names_labels_only(message, ui.input_label(name))


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("steps", 0, ["steps", "0", "in [1, 1000]"]),
        ("steps", 10000, ["steps", "10000", "in [1, 1000]"]),
        ("steps", 2.5, ["steps", "whole"]),
        ("seed", -1, ["seed", "-1"]),
        ("seed", 2**32, ["seed", str(2**32)]),
        ("num_seeds", 9, ["Seeds must be", "9"]),
        ("guidance_scale", float("nan"), ["Guidance scale w", "nan"]),
        ("guidance_scale", "lots", ["Guidance scale w", "lots"]),
        ("height", 100, ["height", "multiple of 8"]),
        ("width", 4096, ["width", "4096"]),
        ("left_method", "PAG", ["Left side must be", "PAG", "cfg-zero-star"]),
        ("scheduler", "LCM", ["scheduler", "LCM"]),
        ("prompt", "  ", ["prompt", "empty"]),
        ("prompt", "x" * 1001, ["prompt", "1000"]),
        ("right_interval", "paper", ["Right side, σ interval", "paper", "sdxl"]),
        ("right_norm_threshold", -1, ["Right side, r (norm threshold)", "-1"]),
        ("negative_prompt", "x" * 1001, ["Negative prompt must be", "1000"]),
    ],
)
def test_bad_input_is_a_message_naming_it(name, value, words):
    with pytest.raises(gr.Error) as info:
        compare(**{name: value})
    for word in words:
        assert word in info.value.message
    assert_names_labels_only(info.value.message, words[0])


def test_every_input_label_is_on_screen():
    # A side's input is 'Right side, <its label>': the right panel's method menu is labelled 'Right side'.
    labels = {c["props"].get("label") for c in ui.build_demo().get_config_file()["components"]}
    for name in logic.defaults():
        assert set(ui.input_label(name).split(", ", 1)) <= labels, name


def test_user_text_in_a_message_is_not_relabelled():
    # The names of inputs are replaced outside quotes only: a user's value is shown as typed.
    assert ui.on_screen("right_sigma_low must be below right_sigma_high, got 'right_eta'") == (
        "Right side, σ low must be below Right side, σ high, got 'right_eta'")


def test_custom_interval_needs_low_below_high():
    with pytest.raises(gr.Error, match=r"Right side, σ low must be below Right side, σ high, got \(5, 1\]"):
        compare(right_interval="custom", right_sigma_low=5, right_sigma_high=1)
    request = logic.parse_request(right_interval="custom", right_sigma_low=0.5)  # empty high: no upper end
    assert request.right.interval == (0.5, math.inf)


def test_user_error_logs_one_line_without_traceback(caplog):
    with caplog.at_level(logging.INFO, logger="apg.app"), pytest.raises(gr.Error) as info:
        compare(steps=0)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None and "\n" not in record.getMessage()
    assert info.value.print_exception is False  # Gradio prints no traceback for it either


def test_defaults_are_the_library_class_defaults():
    request = logic.parse_request(seed=5, num_seeds=3)
    assert request.model == "builtin" and request.prompt == "cat" and request.seeds == (5, 6, 7)
    assert request.guidance_scale == apg.SCALE.default
    assert request.left.replace(scale=3.0).build() == apg.CFG(3.0)
    assert request.right.replace(scale=3.0).build() == apg.APG(3.0)  # eta 0, r 0, beta -0.5: no silent preset
    for key, cls in apg.METHODS.items():  # a knob left out takes the chosen class's own default
        assert logic.parse_request(right_method=key, right_momentum=None, guidance_scale=2.0).right.build() == cls(2.0)


def test_every_registered_method_and_a_new_one_are_offered():
    class Halfway(apg.CFG):
        """A test rule with a knob of its own."""

        label = "Halfway"
        parameters = (apg.Param("blend", 0.5, 0.0, 1.0, "a test knob"),)

        def __init__(self, guidance_scale, blend=0.5, *, interval=None):
            super().__init__(guidance_scale, interval=interval)
            self.blend = blend

    apg.register_method("halfway-test", Halfway)
    try:
        config = ui.build_demo().get_config_file()
        radios = [c["props"] for c in config["components"] if c["props"].get("elem_id") == "right-method"]
        offered = [choice[1] for choice in radios[0]["choices"]]
        assert offered == list(apg.METHODS) and "halfway-test" in offered
        ids = {c["props"].get("elem_id") for c in config["components"]}
        assert {"left-blend", "right-blend"} <= ids
        assert logic.parse_request(right_method="halfway-test", right_blend=0.25).right.params == {"blend": 0.25}
        with pytest.raises(logic.InputError, match=r"right_blend must be in \[0.0, 1.0\], got 2"):
            logic.parse_request(right_method="halfway-test", right_blend=2)
    finally:
        del apg.METHODS["halfway-test"]


def test_unknown_class_is_named_once():
    with pytest.raises(gr.Error) as info:
        compare(prompt="zebra", num_seeds=4, steps=2)
    assert info.value.message.count("zebra") == 2  # "'zebra' is not a class ... ['zebra']", not once per seed


def test_size_on_a_fixed_size_model_warns_and_keeps_size():
    with pytest.warns(UserWarning, match="height ignored"):
        slider, *_ = compare(height=64, steps=2, num_seeds=1)
    assert image_of(slider[0]).size == (32, 32)


# -- generation ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_result():
    """One default-settings comparison (small), shared by the checks below."""
    return compare(**FAST)


def test_left_cfg_equals_the_builtin_pipelines_own_cfg(default_result):
    # Independent reference: the built-in pipeline's native CFG, with no apg.guide involved.
    slider, _, gallery, _, _ = default_result
    pipe = apg.load_builtin()
    generator = [torch.Generator("cpu").manual_seed(seed) for seed in (0, 1)]
    reference = pipe(class_labels=pipe.get_label_ids(["cat"] * 2), guidance_scale=apg.SCALE.default,
                     num_inference_steps=FAST["steps"], generator=generator, output_type="pil").images
    for i, ref in enumerate(reference):
        assert np.abs(pixels(gallery[2 * i][0]) - pixels(ref)).max() <= 1
    assert np.abs(pixels(slider[0]) - pixels(reference[0])).max() <= 1


def test_apg_side_differs_and_clips_less(default_result):
    slider, _, _, table, _ = default_result
    assert np.abs(pixels(slider[0]) - pixels(slider[1])).max() > 10  # the right side really used another rule
    assert table["APG clipped %"].mean() < table["CFG clipped %"].mean()


def test_metrics_shown_are_those_of_each_image(default_result):
    _, summary, gallery, table, _ = default_result
    assert list(table.columns) == ["seed", "CFG saturation", "CFG clipped %", "APG saturation", "APG clipped %"]
    assert list(table["seed"]) == [0, 1]
    caption = re.compile(r"^#(\d+) (CFG|APG) · S (\d\.\d{3}) · clipped ([\d.]+) %$")
    for i in range(2):
        for name, (image, text) in zip(("CFG", "APG"), gallery[2 * i: 2 * i + 2]):
            saturation, clipped = reference_saturation(image_of(image)), reference_clipping(image_of(image))
            assert table[f"{name} saturation"][i] == pytest.approx(saturation, abs=1e-4)
            assert table[f"{name} clipped %"][i] == pytest.approx(100 * clipped, abs=0.005 + 1e-9)
            seed, shown_name, shown_saturation, shown_clipped = caption.match(text).groups()
            assert (int(seed), shown_name) == (i, name)
            assert float(shown_saturation) == pytest.approx(saturation, abs=5e-4 + 1e-9)
            assert float(shown_clipped) == pytest.approx(100 * clipped, rel=0.05, abs=0.01)
    first = re.findall(r"saturation \*\*(\d\.\d{3})\*\*, clipped \*\*([\d.]+) %\*\*", summary)
    assert [float(s) for s, _ in first] == pytest.approx([table["CFG saturation"][0], table["APG saturation"][0]],
                                                          abs=5e-4 + 1e-9)
    assert [float(c) for _, c in first] == pytest.approx([table["CFG clipped %"][0], table["APG clipped %"][0]],
                                                         rel=0.05, abs=0.01)


def test_same_method_on_both_sides_names_the_sides():
    request = logic.parse_request(left_method="apg", right_method="apg", right_norm_threshold=5)
    assert logic.column_names(request) == ("APG (left)", "APG (right)")


def _exec_images(code):
    namespace = {}
    exec(compile(code, "<copy-as-code>", "exec"), namespace)  # the code a user would paste
    return namespace["images"]


def test_copy_as_code_reproduces_the_images(default_result):
    _, _, gallery, _, code = default_result
    images = _exec_images(code)
    for i in range(2):
        assert np.array_equal(pixels(images["left"][i]), pixels(gallery[2 * i][0]))
        assert np.array_equal(pixels(images["right"][i]), pixels(gallery[2 * i + 1][0]))


PRESET_INTERVAL = next(iter(apg.INTERVALS))
# The right side's interval inputs -> (the interval they mean, text the code must hold); the left side runs without.
INTERVAL_CASES = {
    "preset": (dict(right_interval=PRESET_INTERVAL), tuple(apg.INTERVALS[PRESET_INTERVAL]),
               [f"interval={tuple(apg.INTERVALS[PRESET_INTERVAL])!r}", f"  # apg.INTERVALS[{PRESET_INTERVAL!r}]"]),
    "custom, no upper end": (dict(right_interval="custom", right_sigma_low=0.5), (0.5, math.inf),
                             ["interval=(0.5, float('inf'))"]),
}


@pytest.mark.parametrize("interval", list(INTERVAL_CASES))
@pytest.mark.parametrize("method", list(apg.METHODS))
def test_each_method_and_interval_runs_and_the_executed_code_gives_the_same_pixels(method, interval):
    inputs, expected, texts = INTERVAL_CASES[interval]
    slider, summary, _, _, code = compare(left_method=method, right_method=method, **inputs, steps=4, num_seeds=1)
    cls = apg.METHODS[method]
    assert summary.count(logic.escape_markdown(cls.label)) == 2 and "σ∈(" in summary
    assert all(text in code for text in texts), code
    images = _exec_images(code)  # the interval off (left) and on (right)
    assert np.array_equal(pixels(images["left"][0]), pixels(slider[0]))
    assert np.array_equal(pixels(images["right"][0]), pixels(slider[1]))
    # Independent of the app: the same rule through apg.guide directly.
    pipe = apg.load_builtin()
    with apg.guide(pipe, cls(apg.SCALE.default, interval=expected)):
        direct = pipe(class_labels=pipe.get_label_ids(["cat"]), num_inference_steps=4,
                      generator=[torch.Generator("cpu").manual_seed(0)], output_type="pil").images
    assert np.array_equal(pixels(direct[0]), pixels(slider[1]))


def _every_setting():
    """Each method at each knob's bounds and default, with and without intervals (one open-ended)."""
    for key, cls in apg.METHODS.items():
        for interval in (None, (0.0, math.inf), (0.28, 5.42)):
            for scale in (0.0, apg.SCALE.default):
                yield apg.Setting(key, scale=scale, interval=interval)
            for param in cls.parameters:
                for value in {param.low, param.high}:
                    value = value if math.isfinite(value) else 10**9  # the library's knobs are finite
                    # A tuple knob (FDG's per-level scales) holds its bound in each of two entries.
                    value = (float(value),) * 2 if param.kind is tuple else param.kind(value)
                    yield apg.Setting(key, {param.name: value}, interval=interval)
                yield apg.Setting(key, {param.name: param.default}, interval=interval)


def test_the_code_of_every_setting_is_python_that_builds_the_same_guidance():
    class Halfway(apg.CFG):  # registered from outside: not in apg's namespace
        label = "Halfway"

    apg.register_method("halfway-test", Halfway)
    try:
        for setting in [*_every_setting(), apg.Setting("halfway-test", scale=2.0, interval=(1.0, math.inf))]:
            code = setting.code()  # what the copy-as-code box writes for a side
            assert eval(code, {"apg": apg}) == setting.build(), code  # noqa: S307: our own generated code
    finally:
        del apg.METHODS["halfway-test"]


def test_scheduler_choice_is_used_and_the_models_own_is_restored():
    model = ui.CACHE.get("builtin")
    own = model.pipe.scheduler
    dpm, *_ = compare(scheduler="DPMSolverMultistepScheduler", **FAST)
    default, *_ = compare(**FAST)
    assert model.pipe.scheduler is own
    assert np.abs(pixels(dpm[1]) - pixels(default[1])).max() > 0
    with pytest.raises(gr.Error, match="does not fit this model"):  # a flow-matching scheduler on an eps model
        compare(scheduler="FlowMatchEulerDiscreteScheduler", **FAST)
    assert model.pipe.scheduler is own


VP = ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"]
FLOW_MATCH = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]


@pytest.mark.parametrize("own, prediction, offered, refused", [
    ("euler", "epsilon", VP, FLOW_MATCH + ["EDMEulerScheduler"]),
    ("ddim", "v_prediction", VP, FLOW_MATCH + ["EDMEulerScheduler"]),
    ("ddim", "sample", ["DDIMScheduler", "EulerDiscreteScheduler"],  # their step() has no x0 for 'sample' in the table
     FLOW_MATCH + ["PNDMScheduler", "EulerAncestralDiscreteScheduler"]),
    ("flow_euler", None, ["FlowMatchEulerDiscreteScheduler"], VP),
    ("dpmpp_2m_flow", None, ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"],
     ["DDIMScheduler", "EulerDiscreteScheduler"]),
])
def test_only_schedulers_that_fit_the_model_are_offered(own, prediction, offered, refused):
    import tiny_pipelines

    scheduler = tiny_pipelines.make_scheduler(own, prediction)
    fits = logic.fitting_schedulers(scheduler)
    assert fits[0] == logic.DEFAULT_SCHEDULER and type(scheduler).__name__ in fits
    assert set(offered) <= set(fits) and not set(refused) & set(fits), fits


def test_every_offered_scheduler_runs_and_its_code_reproduces_it():
    offered = ui.CACHE.get("builtin").schedulers
    menu = next(c["props"] for c in ui.build_demo().get_config_file()["components"]
                if c["props"].get("elem_id") == "scheduler")
    assert [value for _, value in menu["choices"]] == list(offered)
    for name in offered[1:]:
        # APG on both sides: the same noise gives the same image (DPM-Solver SDE seeds its own noise: see
        # logic.seeded_config). PNDM fails below 4 steps, stock too.
        slider, *_, code = compare(scheduler=name, left_method="apg", steps=4, num_seeds=2)
        assert f"pipe.scheduler = {name}.from_config(pipe.scheduler.config" in code
        assert np.array_equal(pixels(slider[0]), pixels(slider[1])), name
        images = _exec_images(code)
        assert np.array_equal(pixels(images["right"][0]), pixels(slider[1])), name


def test_scheduler_menu_follows_the_model(monkeypatch, tmp_path):
    import tiny_pipelines

    monkeypatch.setattr(ui, "CACHE", logic.ModelCache(loader=lambda model_id: (
        tiny_pipelines.tiny_sd3_pipeline() if model_id == "tiny-flow" else logic._load(model_id))))
    flow = ui.scheduler_menu("tiny-flow", "DDIMScheduler")  # a choice the new model cannot run falls back
    assert flow["value"] == logic.DEFAULT_SCHEDULER
    assert [value for _, value in flow["choices"]] == [logic.DEFAULT_SCHEDULER, "FlowMatchEulerDiscreteScheduler"]
    kept = ui.scheduler_menu("builtin", "DDIMScheduler")
    assert kept["value"] == "DDIMScheduler" and "FlowMatchEulerDiscreteScheduler" not in str(kept["choices"])
    with pytest.raises(gr.Error, match="Model not loaded"):
        ui.scheduler_menu(str(tmp_path / "missing"), logic.DEFAULT_SCHEDULER)


def test_per_request_state_same_images_when_repeated_after_other_work():
    first, *_ = compare(right_method="mcfg", right_momentum=-0.75, **FAST)
    compare(seed=9, **FAST)  # other runs in between must leave no momentum behind
    again, *_ = compare(right_method="mcfg", right_momentum=-0.75, **FAST)
    assert np.array_equal(pixels(first[1]), pixels(again[1]))


# -- models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["{tmp}/no-such-model", "nobody-apg-test/no-such-model"])
def test_missing_model_is_a_message_a_ui_user_can_act_on(model, tmp_path):
    # A missing local path, and an unknown hub id (here offline; online the Hub answers 404): both a message.
    with pytest.raises(gr.Error) as info:
        compare(model=model.format(tmp=tmp_path), **FAST)
    message = info.value.message
    assert message.startswith("Model not loaded: ") and "no-such-model" in message
    assert "--model" not in message  # a command-line option means nothing in the UI


def test_hub_models_load_without_remote_code(monkeypatch):
    import diffusers

    calls = []

    def from_pretrained(model_id, **kwargs):
        calls.append((model_id, kwargs))
        raise OSError("offline")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", from_pretrained)
    with pytest.raises(apg.runtime.ModelLoadError, match="'org/model' is not in the local Hugging Face cache"):
        logic.ModelCache().get("org/model")
    [(model_id, kwargs)] = calls
    assert model_id == "org/model"
    assert not kwargs.get("trust_remote_code") and "custom_pipeline" not in kwargs


def test_cache_loads_each_model_once_and_evicts_old_hub_models():
    loads = []

    def loader(model_id):
        loads.append(model_id)
        return apg.load_builtin()

    cache = logic.ModelCache(max_models=1, loader=loader)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        models = list(pool.map(cache.get, ["builtin"] * 4))
    assert loads == ["builtin"] and all(m is models[0] for m in models)
    cache.get("a")
    cache.get("b")  # evicts "a", never the built-in one
    cache.get("builtin")
    cache.get("a")
    assert loads == ["builtin", "a", "b", "a"]


@pytest.fixture(scope="module")
def tiny_sd_path(tmp_path_factory):
    import tiny_pipelines

    path = tmp_path_factory.mktemp("tiny-sd")
    tiny_pipelines.tiny_sd_pipeline().save_pretrained(path)
    return str(path)


def test_text_to_image_model_by_local_path_matches_a_direct_call(tiny_sd_path):
    from diffusers import DiffusionPipeline

    slider, _, gallery, _, code = compare(model=tiny_sd_path, prompt="a red bus", negative_prompt="blurry", **FAST)
    device = apg.runtime.resolve_device(None)  # where the app puts a hub or local model, in its default dtype
    dtype = apg.runtime.resolve_dtype(None, device)
    pipe = DiffusionPipeline.from_pretrained(tiny_sd_path, dtype=dtype).to(device)
    generator = [torch.Generator("cpu").manual_seed(seed) for seed in (0, 1)]
    with apg.guide(pipe, apg.APG(apg.SCALE.default)):
        reference = pipe(prompt=["a red bus"] * 2, negative_prompt=["blurry"] * 2, num_inference_steps=FAST["steps"],
                         generator=generator, output_type="pil").images
    assert np.abs(pixels(slider[1]) - pixels(reference[0])).max() <= 1
    assert np.abs(pixels(gallery[3][0]) - pixels(reference[1])).max() <= 1
    assert f"from_pretrained({tiny_sd_path!r}, dtype={dtype}).to({device.type!r})" in code and "torch_dtype" not in code
    assert "prompt=['a red bus'] * len(seeds), negative_prompt=['blurry'] * len(seeds)" in code
    without, *_ = compare(model=tiny_sd_path, prompt="a red bus", **FAST)
    assert np.abs(pixels(without[1]) - pixels(slider[1])).max() > 0  # the negative prompt was used


def test_text_to_image_model_takes_the_size(tiny_sd_path):
    slider, *_, code = compare(model=tiny_sd_path, prompt="a red bus", height=64, width=128, steps=2, num_seeds=1)
    assert image_of(slider[0]).size == image_of(slider[1]).size == (128, 64)
    assert "height=64, width=128" in code


def test_image_to_image_model_is_refused_and_the_ui_says_why(tmp_path):
    import tiny_pipelines

    tiny_pipelines.tiny_sd_pipeline(img2img=True).save_pretrained(tmp_path)
    with pytest.raises(gr.Error) as info:
        compare(model=str(tmp_path), prompt="a red bus", **FAST)
    assert "StableDiffusionImg2ImgPipeline" in info.value.message and "needs an input image" in info.value.message
    assert logic.SCOPE in info.value.message
    config = ui.build_demo().get_config_file()
    [model_box] = [c["props"] for c in config["components"] if c["props"].get("elem_id") == "model"]
    assert logic.SCOPE in model_box["info"]  # said up front, not only after a failed load


def test_unsupported_pipeline_is_a_message(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8,), layers_per_block=1,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    with pytest.raises(gr.Error, match="not supported|neither a prompt"):
        compare(model=str(tmp_path), **FAST)


# -- launched app ----------------------------------------------------------------------------------
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo = ui.build_demo()
    ui.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        # No downloads (gradio_client leaves a folder in /tmp per file): outputs are the server's own files.
        yield gradio_client.Client(demo.local_url, verbose=False, download_files=False)
    finally:
        demo.close()


def test_api_lists_every_input_by_name(client):
    names = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
             ["named_endpoints"]["/compare"]["parameters"]]
    assert names == list(logic.defaults())


def test_compare_endpoint_with_defaults_returns_two_pngs(client):
    slider, _, gallery, table, _ = client.predict(steps=6, api_name="/compare")
    left, right = slider
    for path in (left, right):
        with Image.open(local_path(path)) as image:
            assert image.format == "PNG" and image.size == (32, 32)
    assert len(gallery) == 2 * logic.NUM_SEEDS.default
    assert table["headers"][1:] == ["CFG saturation", "CFG clipped %", "APG saturation", "APG clipped %"]
    direct, *_ = compare(steps=6)
    assert np.array_equal(pixels(left), pixels(direct[0]))  # PNG: lossless, the same pixels
    assert np.array_equal(pixels(right), pixels(direct[1]))


def test_bad_input_through_the_api_is_a_message_and_the_app_stays_up(client, tmp_path):
    for inputs, words in [
        (dict(steps=0), r"Invalid settings: steps must be in \[1, 1000\], got 0"),
        (dict(height=100), "height must be a multiple of 8"),
        (dict(seed=-3), "seed must be in"),
        (dict(model=str(tmp_path / "missing")), "Model not loaded"),
    ]:
        with pytest.raises(Exception, match=words):
            client.predict(**inputs, api_name="/compare")
    slider, *_ = client.predict(steps=4, num_seeds=1, api_name="/compare")
    assert local_path(slider[0]).is_file()


def assert_concurrent_equals_sequential(client, settings):
    settings = [{**FAST, **s} for s in settings]
    sequential = [client.predict(**s, api_name="/compare")[0] for s in settings]
    start = threading.Barrier(len(settings))

    def submit(s):
        start.wait(timeout=30)
        return client.submit(**s, api_name="/compare").result(timeout=120)[0]

    with concurrent.futures.ThreadPoolExecutor(len(settings)) as pool:
        concurrent_results = list(pool.map(submit, settings))
    for seq, conc in zip(sequential, concurrent_results):
        assert np.array_equal(pixels(seq[0]), pixels(conc[0]))
        assert np.array_equal(pixels(seq[1]), pixels(conc[1]))
    return sequential


def test_concurrent_requests_on_two_models_give_the_sequential_images(client, tiny_sd_path):
    sequential = assert_concurrent_equals_sequential(client, [
        dict(seed=3, right_momentum=-0.75),
        dict(seed=3, right_method="mcfg", right_momentum=-0.5),
        dict(model=tiny_sd_path, prompt="a red bus", right_momentum=-0.75),
        dict(model=tiny_sd_path, prompt="a red bus", seed=1, scheduler="EulerDiscreteScheduler"),
    ])
    assert not np.array_equal(pixels(sequential[0][1]), pixels(sequential[1][1]))  # the settings do differ


def test_user_text_in_a_message_is_not_html():
    with pytest.raises(gr.Error) as info:
        compare(prompt="<img src=x onerror=alert(1)>", steps=2, num_seeds=1)
    assert "<img" not in info.value.message and "&lt;img src=x" in info.value.message


def test_negative_prompt_on_a_class_conditional_model_warns():
    with pytest.warns(UserWarning, match="negative prompt ignored: .* takes none"):
        compare(negative_prompt="blurry", steps=2, num_seeds=1)
