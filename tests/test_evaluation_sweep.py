"""Sweeps (CSV, plot, grid) and reports: mechanics on the fake pipeline, saturation vs scale on the built-in model."""

import csv
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_helpers as helpers  # noqa: E402

import apg  # noqa: E402
from apg.evaluation import clipping, generation, saturation  # noqa: E402
from apg.evaluation.cli import main as cli_main  # noqa: E402
from apg.evaluation.sweeps import collect_scores, setting_label, sweep, write_report  # noqa: E402

EXTRACTOR = helpers.register_extractor()


def read_csv(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def test_sweep_writes_csv_plot_grid_and_report(monkeypatch, tmp_path):
    monkeypatch.setattr(generation, "apply_guidance", helpers.fake_guide)
    previous_umask = os.umask(0o002)  # a group-shared run: every output must be group-readable and -writable
    try:
        reference = tmp_path / "reference"
        generation.generate(helpers.FakePipeline(), apg.CFG(1.0), reference, num_images=8,
                            classes=list(helpers.CLASSES), seed=1000, num_inference_steps=3, progress=False)
        out = tmp_path / "sweep"
        rows = sweep(helpers.FakePipeline(), out, methods=("cfg", "apg"), scales=(1.0, 3.0), num_images=6,
                     classes=list(helpers.CLASSES), num_inference_steps=3, batch_size=4, reference=reference,
                     score_options={"feature_extractor": EXTRACTOR}, method_params={"apg": {"norm_threshold": 1.0}},
                     model="fake", grid_count=4, progress=False)
    finally:
        os.umask(previous_umask)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"sweep.csv", "sweep.png", "grid.png", "sweep.json", "run.json", "score.json"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o664 for p in written}
    table = read_csv(out / "sweep.csv")
    assert [(r["method"], float(r["guidance_scale"])) for r in table] == [
        ("cfg", 1.0), ("cfg", 3.0), ("apg", 1.0), ("apg", 3.0)]
    for row, folder in zip(table, ["cfg_w1", "cfg_w3", "apg_w1", "apg_w3"]):
        images = [Image.open(p) for p in sorted((out / folder).glob("*.png"))]
        assert len(images) == 6 and float(row["saturation"]) == pytest.approx(saturation(images), abs=1e-9)
        assert float(row["clipping"]) == pytest.approx(clipping(images), abs=1e-9)
        assert np.isfinite(float(row["fid"])) and row["reference_clipping"]
        recorded = json.loads((out / folder / "score.json").read_text())
        assert recorded["run"]["guidance"]["guidance_scale"] == float(row["guidance_scale"])
    assert table[0]["fid"] == table[2]["fid"]  # at w = 1 CFG and APG are the conditional model, same seeds
    assert [setting_label(r) for r in rows] == ["CFG", "CFG", "APG η=0 r=1 β=-0.5", "APG η=0 r=1 β=-0.5"]
    plot = Image.open(out / "sweep.png")
    assert plot.width > 3 * plot.height  # four panels: saturation, clipping, FID, FID vs saturation
    grid = Image.open(out / "grid.png")  # 4 settings x 4 samples of 16 px x 6, under a header, right of labels
    assert grid.height == 40 + 4 * (96 + 4) and grid.width > 4 * (96 + 4) + 60
    # report: the same rows back from the score files, as CSV and a Markdown table.
    collected = collect_scores([out])
    assert sorted(r["fid"] for r in collected) == sorted(r["fid"] for r in rows)
    text = write_report(collected, tmp_path / "report.csv")
    assert text.startswith("| run | method | guidance_scale") and len(read_csv(tmp_path / "report.csv")) == 4
    with pytest.raises(ValueError, match="no score.json found"):
        collect_scores([reference])


def test_sweep_takes_intervals_as_a_dimension(monkeypatch, tmp_path):
    monkeypatch.setattr(generation, "apply_guidance", helpers.fake_guide)
    out = tmp_path / "sweep"
    rows = sweep(helpers.FakePipeline(), out, methods=("apg", "cfg-zero-star"), scales=(4.0,),
                 intervals=(None, (0.3, 0.8)), num_images=4, classes=list(helpers.CLASSES), num_inference_steps=5,
                 method_params={"apg": {"norm_threshold": 1.0}}, model="fake", progress=False)
    assert [setting_label(r) for r in rows] == ["APG η=0 r=1 β=-0.5", "APG η=0 r=1 β=-0.5 σ∈(0.3, 0.8]",
                                                "CFG-Zero* zero-init=1", "CFG-Zero* zero-init=1 σ∈(0.3, 0.8]"]
    table = read_csv(out / "sweep.csv")
    assert [r["interval"] for r in table] == ["", "0.3,0.8", "", "0.3,0.8"]
    run = json.loads((out / "apg_s0.3-0.8_w4" / "run.json").read_text())
    assert run["guidance"]["interval"] == [0.3, 0.8]
    assert apg.Guidance.from_dict(run["guidance"]) == apg.APG(4.0, norm_threshold=1.0, interval=(0.3, 0.8))
    # Guidance on fewer steps changes the images: the interval reached the sampler.
    assert table[0]["saturation"] != table[1]["saturation"]


def test_builtin_sweep_saturation_grows_with_cfg_scale(tmp_path, capsys):
    """The paper's observation on the built-in CIFAR-10 model, through the command line."""
    out = tmp_path / "sweep"
    code = cli_main(["sweep", "--model", "builtin", "--classes", "airplane", "cat", "frog", "ship", "--num-images",
                     "8", "--steps", "8", "--batch-size", "8", "--methods", "cfg", "apg", "--scales", "1", "3", "6",
                     "10", "--norm-threshold", "2.5", "--momentum", "-0.75", "--out", str(out), "--no-cache"])
    assert code == 0, capsys.readouterr().err
    table = read_csv(out / "sweep.csv")
    cfg = [float(r["saturation"]) for r in table if r["method"] == "cfg"]
    apg_ = [float(r["saturation"]) for r in table if r["method"] == "apg"]
    assert all(a < b for a, b in zip(cfg, cfg[1:])), cfg  # strictly growing with the CFG scale
    assert apg_[-1] < cfg[-1], (apg_, cfg)  # APG saturates less at the highest scale
    assert (out / "sweep.png").stat().st_size > 10_000 and Image.open(out / "grid.png").height == 40 + 8 * 100
    # Saturation alone misleads at high scales; clipping shows what CFG burns and APG does not.
    clipped = {r["method"]: float(r["clipping"]) for r in table if r["guidance_scale"] == "10.0"}
    assert clipped["cfg"] > 5 * clipped["apg"], clipped
    run = json.loads((out / "cfg_w10" / "run.json").read_text())
    assert run["model"] == "builtin" and run["scheduler"]["class"] and run["num_inference_steps"] == 8
    assert cli_main(["report", str(out), "--output", str(tmp_path / "report.csv")]) == 0
    reported = sorted((float(r["guidance_scale"]), float(r["saturation"])) for r in read_csv(tmp_path / "report.csv")
                      if r["method"] == "cfg")
    assert [value for _, value in reported] == cfg


def test_cli_generate_on_the_builtin_model_records_the_preset(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["generate", "--model", "builtin", "--classes", "cat", "3", "--num-images", "3", "--steps", "2",
            "--method", "apg", "--preset", "sdxl", "--scale", "5", "--seed", "11", "--out", str(out)]
    assert cli_main(args) == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["guidance"] == apg.APG.from_preset("sdxl", 5.0).to_dict()
    assert run["conditioning"]["class_labels"] == ["cat", 3] and run["pipeline"] == "ClassConditionalPipeline"
    meta = generation.read_image_metadata(out / "000002.png")
    assert (meta["seed"], meta["class"], meta["scheduler"]) == (13, "cat", run["scheduler"]["class"])
    assert cli_main([*args[:-6], "--scale", "6", "--seed", "11", "--out", str(out)]) == 2  # another run, same folder
    assert "holds a different run (guidance differ" in capsys.readouterr().err


def test_cli_sweep_without_out_picks_a_folder_and_says_which(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--classes", "cat", "--num-images", "2", "--steps", "2", "--methods", "apg", "--scales", "3",
            "--no-cache"]
    assert cli_main(args) == 0, capsys.readouterr().err
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("apg-eval sweep: writing to runs/sweep-builtin-") and "the same command resumes" in first
    folder = tmp_path / first.split()[4]
    assert (folder / "sweep.csv").is_file() and (folder / "apg_w3" / "run.json").is_file()
    assert cli_main(args) == 0 and capsys.readouterr().out.splitlines()[0] == first  # the same settings, same folder
    assert cli_main([*args[:-2], "4", "--no-cache"]) == 0 and capsys.readouterr().out.splitlines()[0] != first
    # Lists are space-separated: a comma list is refused with the spelling to use.
    with pytest.raises(SystemExit) as exit_:
        cli_main([*args[:-2], "1,4"])
    assert exit_.value.code == 2 and "lists are space-separated: write 1 4" in capsys.readouterr().err
    # An option no chosen method takes is an error, not silently dropped.
    assert cli_main([*args, "--zero-init-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--zero-init-steps applies to cfg-zero-star, none of which is among the methods apg" in err



def test_cli_generate_takes_an_interval_and_every_method(tmp_path, capsys):
    """--interval and CFG-Zero* through `apg-eval generate`: run.json records them, the images are apg.guide's."""
    import torch

    pipe = apg.load_builtin()
    pipe.set_progress_bar_config(disable=True)
    common = ["generate", "--classes", "cat", "ship", "--num-images", "2", "--steps", "6", "--scale", "6",
              "--seed", "5"]
    for options, guidance in [(["--method", "apg", "--interval", "0.28,5.42"], apg.APG(6.0, interval=(0.28, 5.42))),
                              (["--method", "apg", "--interval", "sdxl"], apg.APG(6.0, interval=(0.28, 5.42))),
                              (["--method", "cfg-zero-star", "--zero-init-steps", "2"], apg.CFGZeroStar(6.0, 2))]:
        out = tmp_path / "".join(options)
        assert cli_main([*common, *options, "--out", str(out)]) == 0, capsys.readouterr().err
        run = json.loads((out / "run.json").read_text())
        assert apg.Guidance.from_dict(run["guidance"]) == guidance and run["guidance"].get("interval") == (
            None if guidance.interval is None else list(guidance.interval))
        with apg.guide(pipe, guidance) as guided:
            expected = guided(class_labels=pipe.get_label_ids(["cat", "ship"]), num_inference_steps=6,
                              generator=[torch.Generator().manual_seed(s) for s in (5, 6)], output_type="pil").images
        assert [Image.open(out / f"00000{i}.png").tobytes() for i in range(2)] == [im.tobytes() for im in expected]


class Damped(apg.Guidance):
    """A rule defined here: CFG with its update damped, registered to show up in apg-eval."""

    label = "Damped"
    parameters = (apg.Param("damping", 0.5, 0.0, 1.0, "fraction of the guidance update removed"),)

    def __init__(self, guidance_scale, damping=0.5, *, interval=None):
        super().__init__(guidance_scale, eta=1.0, interval=interval)
        self.damping = self.parameters[0].validate(damping)

    def _guide(self, pred_cond, pred_uncond, step):
        return pred_cond + (1 - self.damping) * (self.guidance_scale - 1) * (pred_cond - pred_uncond)


def test_a_registered_rule_is_offered_by_apg_eval(tmp_path, capsys):
    apg.register_method("damped", Damped)
    try:
        with pytest.raises(SystemExit):
            cli_main(["sweep", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "damped (Damped)" in help_text and "--damping" in help_text
        for method in apg.METHODS:
            assert method in help_text
        out = tmp_path / "sweep"
        assert cli_main(["sweep", "--classes", "cat", "--num-images", "2", "--steps", "2", "--methods", "cfg", "damped",
                         "--damping", "0.25", "--scales", "3", "--out", str(out), "--no-cache"]) == 0
        table = read_csv(out / "sweep.csv")
        assert [(r["method"], r["damping"]) for r in table] == [("cfg", ""), ("damped", "0.25")]
        assert apg.Guidance.from_dict(json.loads((out / "damped_w3" / "run.json").read_text())["guidance"]) == Damped(
            3.0, 0.25)
        assert setting_label(collect_scores([out / "damped_w3"])[0]) == "Damped damping=0.25"
    finally:
        apg.METHODS.pop("damped", None)
