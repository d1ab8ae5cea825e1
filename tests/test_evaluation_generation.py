"""Resumable, distributed generation: per-index seeds, atomic PNGs with metadata, kill and resume, 2 vs 1 process."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_helpers as helpers  # noqa: E402

import apg  # noqa: E402
from apg.evaluation import generation  # noqa: E402
from apg.evaluation.cli import main as cli_main  # noqa: E402
from apg.evaluation.generation import generate, read_image_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "evaluation_helpers.py"


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(generation, "apply_guidance", helpers.fake_guide)
    return helpers.FakePipeline()


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


def test_images_depend_on_their_index_only_and_carry_metadata(fake, tmp_path):
    guidance = apg.APG(4.0, norm_threshold=1.0, momentum=-0.5)
    classes = ["red", "blue", "green"]
    generate(fake, guidance, tmp_path / "a", num_images=7, classes=classes, seed=100, batch_size=3,
             num_inference_steps=3, model="fake", progress=False)
    files = sorted((tmp_path / "a").glob("*.png"))
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(7)]
    # Reference: each image generated alone, with seed 100 + i and class i mod 3.
    for i, path in enumerate(files):
        with helpers.fake_guide(fake, guidance) as pipe:
            alone = pipe(class_labels=fake.get_label_ids([classes[i % 3]]), num_inference_steps=3,
                         generator=[torch.Generator().manual_seed(100 + i)]).images[0]
        assert Image.open(path).tobytes() == alone.tobytes()
        meta = read_image_metadata(path)
        assert (meta["index"], meta["seed"], meta["class"]) == (i, 100 + i, classes[i % 3])
        assert apg.Guidance.from_dict(meta["guidance"]) == guidance and meta["num_inference_steps"] == 3
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["guidance"] == guidance.to_dict() and run["model"] == "fake" and run["num_inference_steps"] == 3
    assert run["conditioning"]["class_labels"] == classes and run["seed"] == 100
    assert {"torch", "diffusers", "torch-fidelity", "python"} <= set(run["versions"])
    # A different batch size gives the same files, bit for bit (seeds and classes follow the index).
    generate(fake, guidance, tmp_path / "b", num_images=7, classes=classes, seed=100, batch_size=4,
             num_inference_steps=3, model="fake", progress=False)
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b")


def test_rerun_generates_only_missing_images_and_refuses_another_run(fake, tmp_path, monkeypatch):
    log = tmp_path / "seeds.log"
    monkeypatch.setenv("APG_FAKE_LOG", str(log))
    guidance = apg.CFG(3.0)
    options = dict(num_images=6, classes=["red", "grey"], seed=0, batch_size=4, num_inference_steps=2, model="fake",
                   progress=False)
    generate(fake, guidance, tmp_path, **options)
    complete = pngs(tmp_path)
    (tmp_path / "000001.png").unlink()
    (tmp_path / "000004.png").unlink()
    (tmp_path / ".tmp-000002.png.abc").write_bytes(b"partial")  # left by a killed writer
    log.write_text("")
    generate(fake, guidance, tmp_path, **options)
    assert log.read_text().split() == ["1", "4"]  # only the missing ones were generated
    assert pngs(tmp_path) == complete and not list(tmp_path.glob(".tmp-*"))
    generate(fake, guidance, tmp_path, **{**options, "num_images": 8})  # extending keeps images 0..5
    assert log.read_text().split() == ["1", "4", "6", "7"] and len(pngs(tmp_path)) == 8
    with pytest.raises(ValueError, match="holds a different run \\(guidance differ"):
        generate(fake, apg.CFG(5.0), tmp_path, **options)


def test_generation_arguments_are_checked(fake, tmp_path):
    g = apg.CFG(2.0)
    with pytest.raises(ValueError, match="num_images must be an int >= 1, got 0"):
        generate(fake, g, tmp_path, num_images=0, classes=["red"])
    with pytest.raises(ValueError, match="exactly one of classes"):
        generate(fake, g, tmp_path, num_images=2, classes=["red"], prompts=["a cat"])
    with pytest.raises(TypeError, match="guidance must be an apg.Guidance"):
        generate(fake, 7.5, tmp_path, num_images=2, classes=["red"])
    # The settings it records: apg.Setting (tests/test_cli_surface.py); a Setting is taken as it is.
    assert generate(fake, apg.Setting("cfg", scale=2.0), tmp_path / "s", num_images=1, classes=["red"],
                    progress=False)["generated"] == 1
    assert json.loads((tmp_path / "s" / "run.json").read_text())["guidance"] == g.to_dict()


def run_helper(out, *extra, launcher=(), env=None, **popen):
    command = [*launcher, str(HELPER), str(out), "--num-images", "6", "--batch-size", "2", "--steps", "3", *extra]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE,
                            text=True, **popen)


def test_two_processes_give_the_files_of_one(fake, tmp_path):
    """Two CPU processes from `accelerate launch` give the files of one, byte for byte.

    `--cpu --num_processes 2` starts one process unless MPI is installed (accelerate's simple launcher);
    `--multi_gpu` starts them with torchrun, and without a visible GPU they join with gloo on the CPU.
    """
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", "29517"]
    reference = tmp_path / "reference"
    helpers.main([str(reference), "--num-images", "6", "--steps", "3", "--scale", "1.0"])
    one = run_helper(tmp_path / "one", "--score", str(reference), launcher=[sys.executable])
    assert one.wait(timeout=120) == 0, one.stderr.read()
    two = run_helper(tmp_path / "two", "--score", str(reference), launcher=accelerate,
                     env={"APG_FAKE_LOG": str(tmp_path / "log"), "CUDA_VISIBLE_DEVICES": ""})
    assert two.wait(timeout=180) == 0, two.stderr.read()
    assert len(pngs(tmp_path / "one")) == 6 and pngs(tmp_path / "one") == pngs(tmp_path / "two")
    assert (tmp_path / "one" / "run.json").read_bytes() == (tmp_path / "two" / "run.json").read_bytes()
    seeds = (tmp_path / "log").read_text().split()
    assert sorted(seeds, key=int) == [str(7 + i) for i in range(6)]  # each image made once, by one process
    # Feature extraction split over the 2 processes and gathered gives the 1-process numbers.
    score_one, score_two = (json.loads((tmp_path / run / "score.json").read_text()) for run in ("one", "two"))
    assert score_two["timing"][helpers.EXTRACTOR]["processes"] == 2
    assert score_two["metrics"]["fid"] == pytest.approx(score_one["metrics"]["fid"], rel=1e-12, abs=1e-12)
    assert score_two["metrics"]["saturation"] == score_one["metrics"]["saturation"] and score_one["metrics"]["fid"] > 0


def test_killed_run_resumes_to_the_uninterrupted_set(fake, tmp_path):
    helpers.main([str(tmp_path / "reference"), "--num-images", "6", "--batch-size", "2", "--steps", "3"])
    out, log = tmp_path / "killed", tmp_path / "seeds.log"
    env = {"APG_FAKE_DELAY": "1.0", "APG_FAKE_LOG": str(log)}
    victim = run_helper(out, launcher=[sys.executable], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < 2 and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    survivors = pngs(out)
    assert 2 <= len(survivors) < 6, "the run must be killed midway"
    for name in survivors:  # every file that exists is a whole PNG
        Image.open(out / name).load()
    logged_before = len(log.read_text().split())
    resumed = run_helper(out, launcher=[sys.executable], env={"APG_FAKE_LOG": str(log)})
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert pngs(out) == pngs(tmp_path / "reference") and not list(out.glob(".tmp-*"))
    # The resumed run made exactly the images that had not been saved: none twice, none lost.
    made_on_resume = [int(seed) - 7 for seed in log.read_text().split()[logged_before:]]
    saved_before = {int(name[:6]) for name in survivors}
    assert sorted(made_on_resume) == sorted(set(range(6)) - saved_before)


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_apg_eval_generate_survives_sigkill_at_random_points(tmp_path, capsys):
    """`apg-eval generate` on the built-in model, SIGKILLed 5 times (3 inside a PNG write) and rerun each time,
    ends byte-identical to an uninterrupted run, run.json included, with no temp file left."""
    args = ["generate", "--model", "builtin", "--classes", "airplane", "cat", "ship", "--num-images", "8",
            "--batch-size", "2", "--steps", "4", "--method", "apg", "--scale", "4", "--seed", "3"]
    reference = tmp_path / "reference"
    assert cli_main([*args, "--out", str(reference)]) == 0
    assert cli_main([*args, "--out", str(reference)]) == 0  # a finished run says so and does nothing
    assert capsys.readouterr().out.splitlines()[-1] == f"apg-eval generate: {reference} is already complete (8 images)"

    out, rng = tmp_path / "killed", random.Random(2026)
    plan = ["write", "write", "write", "after-png", "startup"]
    rng.shuffle(plan)

    def wait_for(condition, victim):
        deadline = time.monotonic() + 180
        while not condition():
            assert victim.poll() is None, f"the run ended before it could be killed: {victim.stderr.read()}"
            assert time.monotonic() < deadline, "timed out waiting for the kill point"
            time.sleep(0.01)

    for mode in plan:
        before = set(pngs(out)) if out.exists() else set()
        victim = subprocess.Popen([sys.executable, str(HELPER), "apg-eval", *args, "--out", str(out)], cwd=ROOT,
                                  env={**os.environ, "APG_SLOW_PNG": "0.3"}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        if mode == "startup":  # while importing or loading the model
            time.sleep(rng.uniform(0.0, 2.0))
        elif mode == "after-png":  # a random moment after this run's first finished PNG
            wait_for(lambda: set(pngs(out)) - before if out.exists() else False, victim)
            time.sleep(rng.uniform(0.0, 0.6))
        else:  # inside the write of this run's n-th PNG: its temp file complete, not yet renamed
            n, seen = rng.randint(1, 2), set()

            def writing():
                temps = {p.name for p in out.glob(".tmp-*.png.*")}
                seen.update(temps)
                return len(seen) >= n and temps

            wait_for(writing, victim)
        assert victim.poll() is None, f"{mode}: the run finished before the kill"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        if mode == "write":
            assert list(out.glob(".tmp-*.png.*")), "killed inside a PNG write: its temp file is left"
        for name in pngs(out):  # every PNG that exists is whole
            Image.open(out / name).load()
    assert len(pngs(out)) < 8
    assert cli_main([*args, "--out", str(out)]) == 0  # the last rerun, uninterrupted
    assert files(out) == files(reference) and not list(out.glob(".tmp-*"))


@pytest.mark.parametrize("family", ["sd", "dit"])
def test_generate_drives_stock_pipelines_through_apg_guide(family, tmp_path):
    """Stock Diffusers pipelines (tiny, random weights): generate() equals the guided pipeline called directly."""
    import tiny_pipelines

    if family == "sd":
        pipe, key, conditions, label = tiny_pipelines.tiny_sd_pipeline(), "prompt", ["a red cat", "a ship"], "prompt"
    else:
        pipe, key, conditions, label = tiny_pipelines.tiny_dit_pipeline(), "class_labels", [3, 7], "class"
    guidance = apg.APG(3.0, norm_threshold=1.0)
    generate(pipe, guidance, tmp_path, num_images=3, seed=5, batch_size=3, num_inference_steps=2, model=family,
             progress=False, **({"prompts": conditions} if key == "prompt" else {"classes": conditions}))
    with apg.guide(pipe, guidance) as guided:
        expected = guided(**{key: [conditions[0], conditions[1], conditions[0]]}, num_inference_steps=2,
                          generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7)], output_type="pil").images
    for i, image in enumerate(expected):
        path = tmp_path / f"{i:06d}.png"
        assert Image.open(path).tobytes() == image.tobytes()
        assert read_image_metadata(path)[label] == conditions[i % 2]
    assert json.loads((tmp_path / "run.json").read_text())["pipeline"] == type(pipe).__name__
