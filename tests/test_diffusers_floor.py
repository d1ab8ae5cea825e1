"""Pipeline and scheduler classes are resolved by name: one the installed Diffusers lacks is unsupported, not an
import error (the floor in pyproject.toml is smoke-tested by .ci/diffusers_floor.py in its own venv in CI)."""

import os
import subprocess
import sys

import diffusers
import pytest

from apg import registry, schedulers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_stock_name_the_installed_diffusers_lacks_is_unsupported(monkeypatch):
    monkeypatch.setitem(registry.STOCK_PIPELINES, "NoSuchPipeline", dict(denoiser="unet", batch="uncond_first"))
    names = {cls.__name__ for cls in registry.registered()}
    assert "NoSuchPipeline" not in names and "StableDiffusionPipeline" in names

    class NoSuchPipeline:  # the name of a stock entry, but not Diffusers' class
        pass

    with pytest.raises(ValueError, match="NoSuchPipeline is not supported") as error:
        registry.spec_for(NoSuchPipeline())
    assert "'StableDiffusionPipeline'" in str(error.value) and "'NoSuchPipeline'" not in str(error.value)


def test_a_lookalike_of_a_stock_class_is_not_taken_for_it():
    class StableDiffusionPipeline:  # same name, another class
        pass

    with pytest.raises(ValueError, match="StableDiffusionPipeline is not supported"):
        registry.spec_for(StableDiffusionPipeline())
    assert registry.spec_for(diffusers.StableDiffusionPipeline.__new__(diffusers.StableDiffusionPipeline)).denoiser \
        == "unet"


def test_a_scheduler_named_like_a_supported_one_is_refused():
    class DDIMScheduler(diffusers.DDIMScheduler):  # a subclass may change step(): not the supported class
        pass

    assert schedulers.check_scheduler(diffusers.DDIMScheduler()) == "alphas_cumprod"
    with pytest.raises(ValueError, match="scheduler DDIMScheduler is not supported"):
        schedulers.check_scheduler(DDIMScheduler())
    assert set(schedulers.SUPPORTED_SCHEDULERS) <= set(dir(diffusers))


def test_the_floor_smoke_test_passes_on_the_installed_diffusers():
    run = subprocess.run([sys.executable, os.path.join(REPO, ".ci", "diffusers_floor.py")], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"diffusers {diffusers.__version__}: import apg and a guided tiny StableDiffusionPipeline ok" in run.stdout


def test_the_floor_is_the_release_ci_installs():
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        floor = next(line for line in f if '"diffusers>=' in line).split(">=")[1].split('"')[0]
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        assert f"diffusers=={floor}" in f.read()
