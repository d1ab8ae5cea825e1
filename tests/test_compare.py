"""`apg compare`, offline: the built-in model, a local pipeline folder, and the errors a user can hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import apg
from apg.cli import main
from apg.evaluation import per_image_saturation


def _table(stdout: str) -> dict[str, list[float]]:
    rows = [line.split("|") for line in stdout.splitlines() if "|" in line]
    return {cells[0].strip(): [float(c) for c in cells[1:]] for cells in rows[1:]}


def test_builtin_grid_reproduces_the_seeded_images(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["compare", "--classes", "cat", "ship", "--scales", "1", "8", "--seeds", "0", "1", "--steps", "8",
                 "--cell", "64", "--out", str(out)]) == 0
    table = _table(capsys.readouterr().out)
    assert list(table) == ["cat / seed 0", "cat / seed 1", "ship / seed 0", "ship / seed 1", "mean"]
    grid = np.asarray(Image.open(out).convert("RGB"))
    left = grid.shape[1] - 4 * 64  # columns: CFG w=1, CFG w=8, APG w=1, APG w=8

    pipe = apg.load_builtin()
    pipe.set_progress_bar_config(disable=True)
    for column, guidance in enumerate((apg.CFG(1.0), apg.CFG(8.0), apg.APG(1.0), apg.APG(8.0))):
        with apg.guide(pipe, guidance):
            image = pipe(class_labels=["ship"], num_inference_steps=8, generator=[torch.Generator().manual_seed(1)],
                         output_type="pil").images[0]
        top = 28 + 3 * (64 + 16)  # header, then rows of cell + caption; "ship / seed 1" is the 4th row
        cell = grid[top:top + 64, left + column * 64:left + (column + 1) * 64]
        expected = np.asarray(image.resize((64, 64), Image.NEAREST))
        # Batch of 4 vs batch of 1: BLAS rounding may move a few pixels by one level, never more.
        np.testing.assert_allclose(cell.astype(int), expected.astype(int), atol=1, rtol=0)
        assert table["ship / seed 1"][column] == pytest.approx(per_image_saturation(image)[0], abs=2e-3)
    # At w = 1 every method is the conditional model: identical images, identical saturation.
    assert table["cat / seed 0"][0] == table["cat / seed 0"][2]
    assert table["cat / seed 0"][1] != table["cat / seed 0"][3]
    record = json.loads(Image.open(out).text["apg-compare"])
    assert record["guidance"]["apg"][1] == apg.APG(8.0).to_dict()


def test_scheduler_option_and_local_pipeline_folder(tmp_path, capsys):
    sys.path.insert(0, os.path.dirname(__file__))
    from tiny_pipelines import tiny_sd_pipeline

    folder = tmp_path / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(folder)
    out = tmp_path / "sd.png"
    assert main(["compare", "--model", str(folder), "--prompt", "a photo of a cat", "--scales", "1", "5",
                 "--methods", "cfg", "apg", "mcfg", "--preset", "sdxl", "--scheduler", "EulerDiscreteScheduler",
                 "--steps", "2", "--cell", "32", "--out", str(out)]) == 0
    table = _table(capsys.readouterr().out)
    assert len(table["a photo of a cat / seed 0"]) == 6
    record = json.loads(Image.open(out).text["apg-compare"])
    assert record["scheduler"] == "EulerDiscreteScheduler"
    assert record["guidance"]["apg"][1] == apg.APG.from_preset("sdxl", 5.0).to_dict()


@pytest.mark.parametrize("argv, message", [
    (["--classes", "zebra"], "'zebra'"),
    (["--classes", "12"], "class label 12 is out of range"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--scheduler", "FancyScheduler"], "'FancyScheduler'"),
    (["--preset", "sdxl", "--eta", "0.5"], "preset 'sdxl'"),
    (["--prompt", "a cat"], "takes class labels, not prompts"),
    (["--methods", "cfg", "--momentum", "-0.7"], "--momentum apply to apg and mcfg"),
    (["--model", "TMP"], "'TMP' is a path without a model_index.json"),
])
def test_bad_input_is_one_line_naming_the_value(argv, message, tmp_path, capsys):
    argv, message = [a.replace("TMP", str(tmp_path)) for a in argv], message.replace("TMP", str(tmp_path))
    assert main(["compare", "--scales", "2", "--steps", "2", "--out", str(tmp_path / "x.png"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_uncached_hub_model_offline_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "apg.cli", "compare", "--model", "someorg/not-a-cached-model", "--prompt", "a cat",
         "--out", str(tmp_path / "x.png")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "'someorg/not-a-cached-model'" in lines[0] and "local" in lines[0] and "network" in lines[0]


def test_apg_eval_is_apg_eval(capsys):
    from apg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: apg-eval")
