"""The Gradio app: its functions called directly, then a launched app driven through gradio_client."""

import concurrent.futures
import importlib.util
import re
import socket
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

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(steps=8, num_seeds=2)  # small runs: the whole file shares two CPU cores with other work


def load_app():
    """app/app.py as module `apg_app` (app/ is a folder of scripts, not a package)."""
    if "apg_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("apg_app", ROOT / "app" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["apg_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["apg_app"]


app = load_app()


def inputs(**overrides):
    """compare()'s positional inputs: the app's defaults with overrides."""
    values = {**app.DEFAULTS, **overrides}
    return [values[name] for name in app.INPUT_NAMES]


def request(**overrides):
    return app.parse_request(*inputs(**overrides))


def reference_saturation(image):
    """(max - min) / max per pixel (0 where max = 0), mean over pixels; float64, from the PNG pixels."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    high, low = rgb.max(-1), rgb.min(-1)
    return float(np.where(high > 0, (high - low) / np.where(high > 0, high, 1), 0).mean())


def local_path(file):
    """Path of an output file; the client returns the server's FileData (same machine)."""
    return Path(file if isinstance(file, (str, Path)) else file.path if hasattr(file, "path") else file["path"])


def pixels(image):
    if not isinstance(image, Image.Image):
        image = Image.open(local_path(image))
    return np.asarray(image, dtype=np.int16)


def test_command_line_binds_this_machine_only_unless_told():
    args = app.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    args = app.parse_args(["--host", "0.0.0.0", "--port", "8000", "--share"])
    assert (args.host, args.port, args.share) == ("0.0.0.0", 8000, True)


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, value, words",
    [
        ("steps", 0, ["steps", "0"]),
        ("steps", 151, ["steps", "151"]),
        ("steps", 2.5, ["steps", "whole"]),
        ("seed", -1, ["seed", "-1"]),
        ("seed", 2**32, ["seed", str(2**32)]),
        ("num_seeds", 9, ["num_seeds", "9"]),
        ("guidance_scale", 31.0, ["guidance_scale", "31"]),
        ("guidance_scale", float("nan"), ["guidance_scale", "nan"]),
        ("guidance_scale", "lots", ["guidance_scale", "lots"]),
        ("right_eta", 1.5, ["right_eta", "1.5"]),
        ("right_norm_threshold", -1.0, ["right_norm_threshold", "-1"]),
        ("left_momentum", -2.0, ["left_momentum", "-2"]),
        ("height", 100, ["height", "multiple of 8"]),
        ("width", 4096, ["width", "4096"]),
        ("left_method", "PAG", ["left_method", "PAG"]),
        ("scheduler", "LCM", ["scheduler", "LCM"]),
        ("prompt", "  ", ["prompt", "empty"]),
        ("prompt", "x" * 1001, ["prompt", "1000"]),
    ],
)
def test_bad_input_is_a_message_naming_it(name, value, words):
    with pytest.raises(gr.Error) as info:
        app.compare(*inputs(**{name: value}))
    for word in words:
        assert word in info.value.message


def test_defaults_parse_to_the_documented_request():
    req = request(seed=5, num_seeds=3)
    assert req.model == "builtin" and req.prompt == "cat"
    assert req.seeds == (5, 6, 7)
    assert req.left.guidance(3.0) == apg.CFG(3.0)
    assert req.right.guidance(3.0) == apg.APG(3.0, eta=0.0, norm_threshold=15.0, momentum=-0.5)
    momentum_cfg = request(right_method="Momentum CFG").right.guidance(2.0)
    assert momentum_cfg == apg.MomentumCFG(2.0, momentum=-0.5, norm_threshold=15.0)


def test_unknown_class_names_the_class():
    with pytest.raises(gr.Error, match="unicorn"):
        app.compare(*inputs(prompt="unicorn", **FAST))


def test_size_on_a_fixed_size_model_warns_and_keeps_size():
    with pytest.warns(UserWarning, match="height is ignored"):
        slider, *_ = app.compare(*inputs(height=64, **FAST))
    assert slider[0].size == (32, 32)


# -- generation ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_result():
    """One default-settings comparison (small), shared by the checks below."""
    return app.compare(*inputs(**FAST))


def test_left_cfg_equals_the_builtin_pipelines_own_cfg(default_result):
    # Independent reference: the built-in pipeline's native CFG, with no apg.guide involved.
    slider, _, gallery, _, _ = default_result
    pipe = apg.load_builtin()
    req = request(**FAST)
    generator = [torch.Generator("cpu").manual_seed(seed) for seed in req.seeds]
    reference = pipe(class_labels=pipe.get_label_ids(["cat"] * 2), guidance_scale=req.guidance_scale,
                     num_inference_steps=req.steps, generator=generator, output_type="pil").images
    for i, ref in enumerate(reference):
        assert np.abs(pixels(gallery[2 * i][0]) - pixels(ref)).max() <= 1
    assert np.abs(pixels(slider[0]) - pixels(reference[0])).max() <= 1


def test_apg_side_differs_and_is_less_saturated(default_result):
    slider, _, _, table, _ = default_result
    left, right = pixels(slider[0]), pixels(slider[1])
    assert np.abs(left - right).max() > 10  # the right side really used another rule
    assert np.mean([row[2] for row in table]) < np.mean([row[1] for row in table])


def test_saturation_shown_is_the_metric_of_each_image(default_result):
    _, summary, gallery, table, _ = default_result
    assert [row[0] for row in table] == [0, 1]
    for i, row in enumerate(table):
        for column, (image, caption) in ((1, gallery[2 * i]), (2, gallery[2 * i + 1])):
            expected = reference_saturation(image)
            assert row[column] == pytest.approx(expected, abs=1e-4)  # table: 4 decimals
            shown = float(re.search(r"^#\d+ (CFG|APG|M-CFG) · (\d\.\d{3})$", caption).group(2))
            assert shown == pytest.approx(expected, abs=5e-4 + 1e-9)  # caption: 3 decimals
    shown = [float(x) for x in re.findall(r"saturation \*\*(\d\.\d{3})\*\*", summary)]
    assert shown == pytest.approx([table[0][1], table[0][2]], abs=5e-4 + 1e-9)


def test_copy_as_code_reproduces_the_images(default_result):
    slider, _, gallery, _, code = default_result
    namespace = {}
    exec(compile(code, "<copy-as-code>", "exec"), namespace)  # the code a user would paste
    images = namespace["images"]
    for i in range(2):
        assert np.array_equal(pixels(images["left"][i]), pixels(gallery[2 * i][0]))
        assert np.array_equal(pixels(images["right"][i]), pixels(gallery[2 * i + 1][0]))


def test_scheduler_choice_is_used_and_the_models_own_is_restored():
    model = app.CACHE.get("builtin")
    own = model.pipe.scheduler
    dpm, *_ = app.compare(*inputs(scheduler="DPM-Solver++ 2M", **FAST))
    default, *_ = app.compare(*inputs(**FAST))
    assert model.pipe.scheduler is own
    assert np.abs(pixels(dpm[1]) - pixels(default[1])).max() > 0
    with pytest.raises(gr.Error, match="does not fit this model"):  # a flow-matching scheduler on an eps model
        app.compare(*inputs(scheduler="FlowMatch Euler", **FAST))
    assert model.pipe.scheduler is own


def test_per_request_state_same_images_when_repeated_after_other_work():
    first, *_ = app.compare(*inputs(right_method="Momentum CFG", right_momentum=-0.75, **FAST))
    app.compare(*inputs(seed=9, **FAST))  # other runs in between must leave no momentum behind
    again, *_ = app.compare(*inputs(right_method="Momentum CFG", right_momentum=-0.75, **FAST))
    assert np.array_equal(pixels(first[1]), pixels(again[1]))


# -- models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["{tmp}/no-such-model", "nobody-apg-test/no-such-model"])
def test_missing_model_is_a_message(model, tmp_path):
    # A missing local path, and an unknown hub id (here offline; online the Hub answers 404): both a message.
    with pytest.raises(gr.Error, match="could not load model") as info:
        app.compare(*inputs(model=model.format(tmp=tmp_path), **FAST))
    assert "no-such-model" in info.value.message


def test_hub_models_load_without_remote_code(monkeypatch):
    import diffusers

    calls = []

    def from_pretrained(model_id, **kwargs):
        calls.append((model_id, kwargs))
        raise OSError("offline")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", from_pretrained)
    with pytest.raises(app.ModelLoadError, match="could not load model 'org/model': .*not in the local Hugging Face cache"):
        app.ModelCache().get("org/model")
    [(model_id, kwargs)] = calls
    assert model_id == "org/model"
    assert not kwargs.get("trust_remote_code") and "custom_pipeline" not in kwargs


def test_cache_loads_each_model_once_and_evicts_old_hub_models():
    loads = []

    def loader(model_id):
        loads.append(model_id)
        return apg.load_builtin()

    cache = app.ModelCache(max_models=1, loader=loader)
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
    tiny = pytest.importorskip("tiny_pipelines", reason="tests/tiny_pipelines.py (issue #3) not there yet")
    path = tmp_path_factory.mktemp("tiny-sd")
    tiny.tiny_sd_pipeline().save_pretrained(path)
    return str(path)


def test_text_to_image_model_by_local_path_matches_a_direct_call(tiny_sd_path):
    from diffusers import DiffusionPipeline

    slider, _, gallery, table, code = app.compare(*inputs(model=tiny_sd_path, prompt="a red bus", **FAST))
    pipe = DiffusionPipeline.from_pretrained(tiny_sd_path)
    generator = [torch.Generator("cpu").manual_seed(seed) for seed in (0, 1)]
    with apg.guide(pipe, apg.APG(7.5, eta=0.0, norm_threshold=15.0, momentum=-0.5)):
        reference = pipe(prompt=["a red bus"] * 2, num_inference_steps=8, generator=generator, output_type="pil").images
    assert np.abs(pixels(slider[1]) - pixels(reference[0])).max() <= 1
    assert np.abs(pixels(gallery[3][0]) - pixels(reference[1])).max() <= 1
    assert f"from_pretrained({tiny_sd_path!r}" in code and "prompt=['a red bus']" in code


def test_text_to_image_model_takes_the_size(tiny_sd_path):
    slider, *_, code = app.compare(*inputs(model=tiny_sd_path, prompt="a red bus", height=64, width=128,
                                           steps=2, num_seeds=1))
    assert slider[0].size == slider[1].size == (128, 64)
    assert "height=64, width=128" in code


def test_unsupported_pipeline_is_a_message(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8,), layers_per_block=1,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    with pytest.raises(gr.Error, match="not supported|neither a prompt"):
        app.compare(*inputs(model=str(tmp_path), **FAST))


# -- launched app ----------------------------------------------------------------------------------
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo = app.build_demo()
    app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        # No downloads (gradio_client leaves a folder in /tmp per file): outputs are the server's own files.
        yield gradio_client.Client(demo.local_url, verbose=False, download_files=False)
    finally:
        demo.close()


def test_compare_endpoint_with_no_arguments_returns_two_pngs(client):
    slider, summary, gallery, table, code = client.predict(api_name="/compare")
    left, right = slider
    for path in (left, right):
        with Image.open(local_path(path)) as image:
            assert image.format == "PNG" and image.size == (32, 32)
    assert len(gallery) == 2 * app.DEFAULTS["num_seeds"]
    direct, *_ = app.compare(*inputs())
    assert np.array_equal(pixels(left), pixels(direct[0]))  # PNG: lossless, the same pixels
    assert np.array_equal(pixels(right), pixels(direct[1]))


def test_bad_input_through_the_api_is_a_message_and_the_app_stays_up(client, tmp_path):
    with pytest.raises(Exception, match="less than minimum value 1"):  # Gradio's own slider check
        client.predict(steps=0, api_name="/compare")
    with pytest.raises(Exception, match="height must be a multiple of 8"):
        client.predict(height=100, api_name="/compare")
    with pytest.raises(Exception, match="seed must be between 0 and"):
        client.predict(seed=-3, api_name="/compare")
    with pytest.raises(Exception, match="could not load model"):
        client.predict(model=str(tmp_path / "missing"), api_name="/compare")
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


def test_concurrent_requests_give_the_sequential_images(client):
    sequential = assert_concurrent_equals_sequential(client, [
        dict(seed=3, right_method="APG", right_momentum=-0.75),
        dict(seed=3, right_method="Momentum CFG", right_momentum=-0.5),
        dict(seed=11, prompt="ship", left_method="APG", left_norm_threshold=5.0),
    ])
    assert not np.array_equal(pixels(sequential[0][1]), pixels(sequential[1][1]))  # the settings do differ


def test_concurrent_requests_on_two_models_give_the_sequential_images(client, tiny_sd_path):
    assert_concurrent_equals_sequential(client, [
        dict(model=tiny_sd_path, prompt="a red bus", right_momentum=-0.75),
        dict(seed=5, right_method="Momentum CFG"),
        dict(model=tiny_sd_path, prompt="a red bus", seed=1, scheduler="Euler"),
    ])
