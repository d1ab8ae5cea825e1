"""`apg compare --model` and the app on a folder that loads as a ModularPipeline (a tiny SDXL one, saved here):
CFG equals a stock modular run with Diffusers' own ClassifierFreeGuidance at the same seed, APG differs, and
a modular pipeline outside the text-to-image scope is refused in one line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_guider import save_sdxl_modular, sdxl_modular, wan_modular

from apg.cli import main
from apg.errors import UnsupportedError
from apg.runtime import call_parameters, generate, load_pipeline
from diffusers.guiders import ClassifierFreeGuidance

pytestmark = pytest.mark.usefixtures("single_thread")

W, PROMPT, SIZE = 15.0, "a photo of a cat", 64  # 64: the app's smallest size


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(save_sdxl_modular(tmp_path_factory.mktemp("models") / "tiny-sdxl-modular"))


def _stock_cfg(folder, seed):
    """The folder's pipeline with Diffusers' own CFG guider at W, no apg: [H, W, 3] uint8."""
    pipe = load_pipeline(folder, "cpu", "float32")
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=W))
    image = pipe(prompt=[PROMPT], num_inference_steps=2, height=SIZE, width=SIZE, output_type="pil",
                 generator=[torch.Generator().manual_seed(seed)], output="images")[0]
    return np.asarray(image, dtype=np.int16)


def test_compare_runs_a_modular_folder_and_its_cfg_column_is_the_stock_guider(folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["compare", "--model", folder, "--prompt", PROMPT, "--scales", str(W), "--methods", "cfg", "apg",
                 "--seeds", "0", "--steps", "2", "--height", str(SIZE), "--width", str(SIZE), "--cell", str(SIZE),
                 "--no-progress", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    grid = Image.open(out)
    record = json.loads(grid.text["apg-compare"])
    assert record["pipeline"] == "StableDiffusionXLModularPipeline"
    cfg, apg_cell = (np.asarray(grid.convert("RGB").crop((x, y, x + w, y + h)), dtype=np.int16)
                     for x, y, w, h in (column[0] for column in record["cells"]))
    assert np.abs(cfg - _stock_cfg(folder, 0)).max() <= 1  # x0-space CFG == Diffusers' guider, up to rounding
    assert np.abs(apg_cell - cfg).mean() > 1  # APG's projection changes the image


def test_the_app_generates_with_a_modular_folder(folder):
    pytest.importorskip("gradio")
    from apg.app import logic

    request = logic.parse_request(model=folder, prompt=PROMPT, steps=2, num_seeds=1, guidance_scale=W,
                                  height=SIZE, width=SIZE)
    result = logic.run(request, logic.ModelCache(loader=lambda model: load_pipeline(model, "cpu", "float32")))
    assert not result.notes and not result.class_conditional
    left = np.asarray(result.images["left"][0], dtype=np.int16)  # left: CFG at W
    assert np.abs(left - _stock_cfg(folder, 0)).max() <= 1
    assert np.abs(np.asarray(result.images["right"][0], dtype=np.int16) - left).mean() > 1  # right: APG
    namespace = {}  # copy-as-code: the code a user would paste loads the folder as a ModularPipeline too
    exec(compile(logic.reproduction_code(request, result.class_conditional), "<copy-as-code>", "exec"), namespace)
    for side in logic.SIDES:
        assert np.array_equal(np.asarray(namespace["images"][side][0]), np.asarray(result.images[side][0]))


def test_a_modular_pipeline_that_is_not_text_to_image_is_refused_in_one_line(tmp_path, capsys):
    pipe = sdxl_modular()  # the denoise blocks alone: embeddings in, latents out
    with pytest.raises(UnsupportedError, match="StableDiffusionXLModularPipeline is a modular pipeline that does "
                                               "not make images from a prompt .*takes no prompt and returns latents"):
        call_parameters(pipe)
    saved = tmp_path / "wan"  # loads as Wan's text-to-video blocks: videos, not images
    wan_modular().save_pretrained(str(saved))
    capsys.readouterr()  # Diffusers' own warnings while saving
    assert main(["compare", "--model", str(saved), "--prompt", PROMPT, "--no-progress",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not make images from a prompt" in err
    assert not (tmp_path / "x.png").exists()


def test_generate_returns_the_modular_images_under_images(folder):
    pipe = load_pipeline(folder, "cpu", "float32")
    assert {"prompt", "negative_prompt", "height", "width", "generator"} <= call_parameters(pipe)
    assert "image" not in call_parameters(pipe)  # img2img / inpainting inputs select other workflows
    images = generate(pipe, prompt=[PROMPT] * 2, num_inference_steps=1, height=SIZE, width=SIZE,
                      generator=[torch.Generator().manual_seed(s) for s in (0, 1)], output_type="pil").images
    assert [image.size for image in images] == [(SIZE, SIZE)] * 2
