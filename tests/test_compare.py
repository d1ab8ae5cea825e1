"""`apg compare`, offline: the built-in model, local pipeline folders, the registry of methods, and the one
error style (one line, exit code 2, no traceback) for what a user can get wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import apg
from apg.cli import build_parser, main
from apg.compare import call_inputs
from apg.evaluation.metrics import per_image_clipping, per_image_saturation

sys.path.insert(0, os.path.dirname(__file__))
from tiny_pipelines import tiny_sd_pipeline  # noqa: E402

FAST = ["--steps", "2", "--no-progress"]


def _table(stdout: str) -> dict[str, list[tuple[float, float]]]:
    """{row label: [(saturation, clipped fraction) per column]} from the printed table."""
    rows = [line.split("|") for line in stdout.splitlines() if "|" in line]
    table = {}
    for cells in rows[1:]:
        pairs = [cell.split() for cell in cells[1:]]
        table[cells[0].strip()] = [(float(s), float(c.rstrip("%")) / 100) for s, c in pairs]
    return table


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words, not layout


@pytest.fixture
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def test_builtin_grid_reproduces_the_seeded_images(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["compare", "--classes", "cat", "ship", "--scales", "1", "8", "--seeds", "0", "1", "--steps", "8",
                 "--cell", "64", "--no-progress", "--out", str(out)]) == 0
    table = _table(capsys.readouterr().out)
    assert list(table) == ["cat / seed 0", "cat / seed 1", "ship / seed 0", "ship / seed 1", "mean"]
    grid = np.asarray(Image.open(out).convert("RGB"))
    record = json.loads(Image.open(out).text["apg-compare"])
    assert [c["type"] for c in record["columns"]] == ["CFG", "CFG", "APG", "APG"]
    # APG's defaults are its class defaults (eta 0, r 0, beta -0.5), not a preset.
    assert record["columns"][3] == apg.APG(8.0).to_dict()

    pipe = apg.load_builtin()
    pipe.set_progress_bar_config(disable=True)
    for column, guidance in enumerate((apg.CFG(1.0), apg.CFG(8.0), apg.APG(1.0), apg.APG(8.0))):
        with apg.guide(pipe, guidance):
            image = pipe(class_labels=["ship"], num_inference_steps=8, generator=[torch.Generator().manual_seed(1)],
                         output_type="pil").images[0]
        x, y, w, h = record["cells"][column][3]  # "ship / seed 1" is the 4th row
        expected = np.asarray(image.resize((w, h), Image.NEAREST))
        # Batch of 4 vs batch of 1: BLAS rounding may move a few pixels by one level, never more.
        np.testing.assert_allclose(grid[y:y + h, x:x + w].astype(int), expected.astype(int), atol=1, rtol=0)
        saturation, clipped = table["ship / seed 1"][column]
        assert saturation == pytest.approx(per_image_saturation(image)[0], abs=2e-3)
        assert clipped == pytest.approx(per_image_clipping(image)[0], abs=2e-4)
    # At w = 1 every method is the conditional model: identical images, identical numbers.
    assert table["cat / seed 0"][0] == table["cat / seed 0"][2]
    assert table["cat / seed 0"][1] != table["cat / seed 0"][3]
    # CFG at w = 8 burns the built-in model's images: far more clipped values than APG at the same scale.
    assert table["mean"][1][1] > 3 * table["mean"][3][1]


def test_class_ids_are_shown_by_name(tmp_path, capsys):
    assert main(["compare", "--classes", "3", "ship", "--scales", "2", "--methods", "cfg", *FAST,
                 "--out", str(tmp_path / "x.png")]) == 0
    assert list(_table(capsys.readouterr().out)) == ["cat / seed 0", "ship / seed 0", "mean"]


def test_every_registered_method_has_its_options_and_runs(tmp_path, capsys):
    text = _help(capsys, "compare")
    for name, cls in apg.METHODS.items():
        assert name in text and cls.label in text
        for param in cls.parameters:
            assert f"--{param.name.replace('_', '-')}" in text and param.help in text
    out = tmp_path / "all.png"
    assert main(["compare", "--methods", *apg.METHODS, "--scales", "1", "4", *FAST, "--out", str(out)]) == 0
    record = json.loads(Image.open(out).text["apg-compare"])
    assert [c["type"] for c in record["columns"]] == [cls.__name__ for cls in apg.METHODS.values() for _ in (1, 4)]


class HalfCFG(apg.Guidance):
    """A test rule: CFG with its difference scaled by `gain`."""

    label = "HalfCFG"
    parameters = (apg.Param("gain", 0.5, 0.0, 1.0, "gain of the guidance difference (test rule)"),)

    def __init__(self, guidance_scale, gain=0.5, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, interval=interval)
        self.gain = self.parameters[0].validate(gain)

    def _guide(self, pred_cond, pred_uncond, step):
        return pred_cond + (self._scale_on(pred_cond) - 1) * self.gain * (pred_cond - pred_uncond)


@pytest.fixture
def registered_rule():
    apg.register_method("half-cfg", HalfCFG)
    yield HalfCFG
    del apg.METHODS["half-cfg"]


def test_a_rule_registered_in_a_test_shows_up_and_runs(registered_rule, tmp_path, capsys):
    text = _help(capsys, "compare")
    assert "half-cfg (HalfCFG)" in text and "--gain GAIN" in text and "gain of the guidance difference" in text
    out = tmp_path / "rule.png"
    assert main(["compare", "--methods", "cfg", "half-cfg", "--gain", "0.25", "--scales", "4", "--classes", "cat",
                 *FAST, "--out", str(out)]) == 0
    table = _table(capsys.readouterr().out)
    record = json.loads(Image.open(out).text["apg-compare"])
    assert record["columns"][1]["type"] == "HalfCFG" and record["columns"][1]["gain"] == 0.25
    assert table["cat / seed 0"][0] != table["cat / seed 0"][1]
    assert main(["compare", "--methods", "half-cfg", "--gain", "2", "--classes", "cat", *FAST,
                 "--out", str(tmp_path / "bad.png")]) == 2
    assert "gain must be in [0.0, 1.0], got 2.0" in capsys.readouterr().err


def test_defaults_are_shown_in_help(capsys):
    text = _help(capsys, "compare")
    for expected in ("(default: builtin)", "(default: 1 4 8 15)", "(default: 0)", "(default: cfg apg)",
                     "(default: 32)", "(default: 128)", "(default: apg-compare.png)", "(default: -0.5)",
                     "(default: on)"):
        assert expected in text, expected
    parser = build_parser()
    compare = parser._subparsers._group_actions[0].choices["compare"]
    for action in compare._actions:
        assert action.help, f"{action.option_strings} has no help text"
    top = _help(capsys)
    assert "compare" in top and "eval" in top and "app" in top


def test_local_pipeline_folder_with_scheduler_preset_negative_prompt_size_and_dtype(sd_folder, tmp_path, capsys):
    out = tmp_path / "sd.png"
    assert main(["compare", "--model", str(sd_folder), "--prompt", "a photo of a cat", "--scales", "1", "5",
                 "--methods", "cfg", "apg", "mcfg", "--preset", "sdxl", "--scheduler", "EulerDiscreteScheduler",
                 "--negative-prompt", "blurry", "--height", "64", "--width", "32", "--dtype", "bfloat16",
                 *FAST, "--cell", "32", "--out", str(out)]) == 0
    table = _table(capsys.readouterr().out)
    assert len(table["a photo of a cat / seed 0"]) == 6
    grid = Image.open(out)
    record = json.loads(grid.text["apg-compare"])
    assert record["scheduler"] == "EulerDiscreteScheduler" and record["dtype"] == "bfloat16"
    assert record["negative_prompt"] == "blurry" and (record["height"], record["width"]) == (64, 32)
    assert record["columns"][3] == apg.APG.from_preset("sdxl", 5.0).to_dict()
    assert record["cells"][0][0][2:] == [32, 64]  # 64 x 32 images keep their aspect ratio in the grid


def test_a_size_the_pipeline_refuses_is_one_line_naming_the_pipeline(sd_folder, tmp_path, capsys):
    """Diffusers' own check_inputs raises a plain ValueError inside the call: one line, exit code 2, no grid."""
    out = tmp_path / "x.png"
    capsys.readouterr()
    argv = ["compare", "--model", str(sd_folder), "--prompt", "a cat", "--height", "60", "--width", "32",
            "--scales", "3", *FAST, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apg compare: error: StableDiffusionPipeline refused the call: `height` and `width` "
                          "have to be divisible by 8") and "\n" not in err
    assert not out.exists()


def test_img2img_folder_needs_and_takes_an_input_image(tmp_path, capsys):
    folder = tmp_path / "tiny-img2img"
    tiny_sd_pipeline(img2img=True).save_pretrained(folder)
    base = ["compare", "--model", str(folder), "--prompt", "a cat", "--scales", "3", *FAST]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "apg compare: error: StableDiffusionImg2ImgPipeline needs an input image: give --image FILE"
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(source)
    assert main([*base, "--image", str(source), "--out", str(tmp_path / "y.png")]) == 0
    record = json.loads(Image.open(tmp_path / "y.png").text["apg-compare"])
    assert record["image"] == str(source)
    assert main([*base, "--image", str(source), "--mask-image", str(source), "--out", str(tmp_path / "z.png")]) == 2
    assert "--mask-image: StableDiffusionImg2ImgPipeline takes no inpainting mask" in capsys.readouterr().err


def test_flux_folder_runs_with_its_true_cfg_scale_and_separate_passes(tmp_path, capsys):
    from tiny_pipelines import tiny_flux_pipeline

    folder = tmp_path / "tiny-flux"
    tiny_flux_pipeline().save_pretrained(folder)
    capsys.readouterr()
    assert main(["compare", "--model", str(folder), "--prompt", "a cat", "--negative-prompt", "blurry",
                 "--height", "32", "--width", "32", "--scales", "1", "4", *FAST, "--cell", "32",
                 "--out", str(tmp_path / "flux.png")]) == 0
    table = _table(capsys.readouterr().out)["a cat / seed 0"]
    assert table[0] == table[2] and table[1] != table[3]  # w = 1 is the conditional model for both


@pytest.mark.parametrize("family, inputs", [
    ("controlnet", {"--control-image": "StableDiffusionControlNetPipeline needs a control image"}),
    ("inpaint", {"--image": "StableDiffusionInpaintPipeline needs an input image",
                 "--mask-image": "StableDiffusionInpaintPipeline needs an inpainting mask"}),
])
def test_control_and_inpaint_folders_take_their_image_inputs(family, inputs, tmp_path, capsys):
    from tiny_control import tiny_sd_controlnet_pipeline, tiny_sd_inpaint_pipeline

    folder = tmp_path / family
    {"controlnet": tiny_sd_controlnet_pipeline, "inpaint": tiny_sd_inpaint_pipeline}[family]().save_pretrained(folder)
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(source)
    base = ["compare", "--model", str(folder), "--prompt", "a cat", "--scales", "1", "4", *FAST, "--cell", "32"]
    for option, message in inputs.items():  # each missing input is named, one line
        others = [a for o in inputs if o != option for a in (o, str(source))]
        capsys.readouterr()
        assert main([*base, *others, "--out", str(tmp_path / "x.png")]) == 2
        assert capsys.readouterr().err.strip() == f"apg compare: error: {message}: give {option} FILE"
    given = [a for o in inputs for a in (o, str(source))]
    assert main([*base, *given, "--out", str(tmp_path / "ok.png")]) == 0
    table = _table(capsys.readouterr().out)["a cat / seed 0"]
    assert table[0] == table[2]  # w = 1: CFG and APG are the conditional model


def test_video_output_shows_the_middle_frame_and_scores_every_frame():
    from apg.compare import _images

    clip = [Image.new("RGB", (8, 8), colour) for colour in ("black", "gray", "white")]
    shown, frames = _images(SimpleNamespace(frames=[clip]))
    assert shown == [clip[1]] and frames == [clip]
    assert per_image_clipping(frames[0]).mean() == pytest.approx(2 / 3)


class _Inpaint:
    def __call__(self, prompt=None, image=None, mask_image=None, control_image=None, height=None):
        pass


class _ControlNet:
    controlnet = object()

    def __call__(self, prompt=None, image=None, height=None):
        pass


def _args(**given):
    keys = ("classes", "prompt", "negative_prompt", "image", "mask_image", "control_image", "height", "width",
            "num_frames")
    return SimpleNamespace(model="x", **{k: given.get(k) for k in keys})


def test_image_inputs_follow_the_call_signature(tmp_path):
    from apg._options import CommandError

    path = tmp_path / "in.png"
    Image.new("RGB", (8, 8), "red").save(path)
    with pytest.raises(CommandError, match="_Inpaint needs an inpainting mask: give --mask-image FILE"):
        call_inputs(_Inpaint(), _args(prompt=["a"], image=str(path), control_image=str(path)))
    inputs = call_inputs(_Inpaint(), _args(prompt=["a"], image=str(path), mask_image=str(path),
                                           control_image=str(path)))
    assert inputs.kwargs["mask_image"].mode == "L" and inputs.kwargs["image"].mode == "RGB"
    # A ControlNet pipeline without a control_image argument takes the control image as `image`.
    with pytest.raises(CommandError, match="_ControlNet needs a control image: give --control-image FILE"):
        call_inputs(_ControlNet(), _args(prompt=["a"]))
    inputs = call_inputs(_ControlNet(), _args(prompt=["a"], control_image=str(path)))
    assert inputs.record == {"image": str(path)}
    with pytest.raises(CommandError, match="--image: _ControlNet takes no input image"):
        call_inputs(_ControlNet(), _args(prompt=["a"], image=str(path), control_image=str(path)))
    with pytest.raises(CommandError, match="--width: _ControlNet takes no width"):
        call_inputs(_ControlNet(), _args(prompt=["a"], control_image=str(path), width=64))
    with pytest.raises(CommandError, match=r"--image 'nope.png': cannot read the image"):
        call_inputs(_Inpaint(), _args(prompt=["a"], image="nope.png", mask_image=str(path), control_image=str(path)))


@pytest.mark.parametrize("argv, message", [
    (["--classes", "zebra"], "'zebra'"),
    (["--classes", "12"], "class label 12 is out of range"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["--scheduler", "FancyScheduler"], "'FancyScheduler'"),
    (["--preset", "sdxl", "--eta", "0.5"], "give either --preset sdxl or --eta, not both"),
    (["--prompt", "a cat"], "takes class labels, not prompts"),
    (["--methods", "cfg", "--momentum", "-0.7"], "--momentum applies to apg, mcfg, none of which"),
    (["--model", "TMP"], "'TMP' is a path without a model_index.json"),
    (["--seeds", "-1"], "argument --seeds: seeds must be in [0, 4294967295], got -1"),
    (["--seeds", "0,1"], "argument --seeds: lists are space-separated: write 0 1, not '0,1'"),
    (["--scales", "1,4,8"], "argument --scales: lists are space-separated: write 1 4 8, not '1,4,8'"),
    (["--methods", "cfg,apg"], "argument --methods: lists are space-separated: write cfg apg"),
    (["--classes", "cat,ship"], "lists are space-separated: write cat ship"),
    (["--scales", "-3"], "guidance_scale must be >= 0"),
    (["--momentum", "-1.5"], "momentum must be in [-1.0, 1.0], got -1.5"),
    (["--eta", "2"], "eta must be in [0.0, 1.0], got 2.0"),
    (["--interval", "5,1"], "interval must satisfy 0 <= sigma_low < sigma_high"),
    (["--interval", "high"], "argument --interval: expected LOW,HIGH"),
    (["--methods", "nope"], "argument --methods: invalid choice: 'nope'"),
    (["--height", "64"], "--height: ClassConditionalPipeline takes no height"),
    (["--device", "gpu"], "device must be a torch device"),
    (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
    (["--bogus"], "unrecognized arguments: --bogus (see apg compare --help)"),
])
def test_bad_input_is_one_line_naming_the_value(argv, message, tmp_path, capsys):
    argv, message = [a.replace("TMP", str(tmp_path)) for a in argv], message.replace("TMP", str(tmp_path))
    try:
        code = main(["compare", "--scales", "2", *FAST, "--out", str(tmp_path / "x.png"), *argv])
    except SystemExit as exit_info:  # argparse's own errors, in the same style
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apg compare: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["compare", "--device", "cuda", *FAST, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("apg compare: error: device 'cuda': CUDA is not available on this machine (no GPU, or a "
                   "CPU-only torch build); use cpu")


def test_uncached_hub_model_offline_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(apg.__file__)), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "apg.cli", "compare", "--model", "someorg/not-a-cached-model", "--prompt", "a cat",
         "--out", str(tmp_path / "x.png")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("apg compare: error: model 'someorg/not-a-cached-model' is not in the local")
    assert "local Diffusers pipeline folder" in lines[0] and "network" in lines[0]


def test_apg_eval_is_apg_eval(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: apg eval ")
