"""docs/census.md is what scripts/census.py reads from the installed Diffusers, and every CFG class has a status."""

import ast
import dataclasses
import importlib.util
import os
import sys

import pytest

from apg.errors import UnsupportedError
from apg.registry import REFUSED, STOCK_PIPELINES, registered, spec_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_READ = {"uncond_first": "[uncond, cond]", "cond_first": "[cond, uncond]", "separate": "two passes"}


def _load():
    spec = importlib.util.spec_from_file_location("census", os.path.join(REPO, "scripts", "census.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


script = _load()


@pytest.fixture(scope="module")
def census():
    found = script.readings()  # static reading of diffusers/pipelines: no pipeline module is imported
    return {r.name: r for r in found}, script.statuses(found)


def test_every_cfg_class_in_diffusers_has_a_status(census):
    _, status = census
    unknown = sorted(name for name, (state, _) in status.items() if state == "unknown")
    assert not unknown, f"CFG classes apg does not know (add them to apg.registry.REFUSED or register them): {unknown}"


def _census_of_this_diffusers():
    """docs/census.md reads one Diffusers release; another one (Python 3.10 gets an older one) has other classes."""
    import diffusers

    with open(os.path.join(REPO, "docs", "census.md"), encoding="utf-8") as f:
        if f"Diffusers {diffusers.__version__}:" not in f.read():
            pytest.skip(f"docs/census.md was generated from another Diffusers than the installed {diffusers.__version__}")


def test_docs_census_is_generated(census):
    _census_of_this_diffusers()
    found, status = census
    with open(os.path.join(REPO, "docs", "census.md"), encoding="utf-8", newline="") as f:
        current = f.read()
    wanted = script.render(list(found.values()), status)
    assert wanted == current, "docs/census.md is stale: run `python scripts/census.py`"


def test_readme_states_the_census_counts(census):
    _census_of_this_diffusers()
    found, status = census
    with open(os.path.join(REPO, "README.md"), encoding="utf-8", newline="") as f:
        current = f.read()
    counts = script.readme_counts(list(found.values()), status, script.tested_classes())
    assert script.render_readme(current, counts) == current, "README.md's census counts are stale: run " \
        "`python scripts/census.py`"
    assert "[docs/census.md](docs/census.md)" in current


def test_every_tiny_case_names_a_guided_class(census):
    # The converse (every guided class has a case) is what the census's tested column and its "Guided without a
    # tiny case" line record, while the family modules fill the tiny registry.
    from tiny_registry import TINY, class_name

    _, status = census
    strays = sorted(key for key in TINY if status.get(class_name(key), ("",))[0] != "guided")
    assert not strays, f"tiny cases of classes the census does not list as guided: {strays}"


def test_the_tested_column():
    reading = script.Reading("APipeline", "a/pipeline_a.py", "live", "u + s(c - u)", "two passes", "unet", (), 1)
    others = [dataclasses.replace(reading, name=name) for name in ("BPipeline", "CPipeline")]
    status = {"APipeline": ("guided", ""), "BPipeline": ("guided", ""), "CPipeline": ("refused", "why")}
    text = script.render([reading, *others], status, tested={"APipeline"})
    assert "34 guided" not in text and "2 guided (1 tested)" in text
    assert "Guided without a tiny case (1): `BPipeline`." in text
    assert "| `APipeline` | `a/pipeline_a.py` | two passes | `u + s(c - u)` | guided | yes |  |" in text
    assert "| guided | no |  |" in text and "| refused |  | why |" in text
    assert "2 guided (1 of them tested" in script.readme_counts([reading, *others], status, {"APipeline"})
    with pytest.raises(ValueError, match="census:start"):
        script.render_readme("no markers", "counts")
    assert script.render_readme("a\n<!-- census:start -->\nold\n<!-- census:end -->\nb", "new") == \
        "a\n<!-- census:start -->\nnew\n<!-- census:end -->\nb"


def test_refused_names_live_cfg_classes_that_are_not_guided(census):
    found, _ = census
    guided = {cls.__name__ for cls in registered()}
    assert not set(REFUSED) & guided, "a class both guided and refused: drop its REFUSED entry"
    _census_of_this_diffusers()
    stale = sorted(name for name in REFUSED if name not in found or found[name].kind != "live")
    assert not stale, f"REFUSED names classes without a live CFG line in this Diffusers: {stale}"


def test_the_reading_of_each_guided_class_agrees_with_its_registry_entry(census):
    # Two independent sources: the registry was written by hand from each __call__, the census reads the AST.
    found, _ = census
    for cls, spec in registered().items():
        if cls.__name__ not in STOCK_PIPELINES:  # a class registered by another test (the built-in model's)
            continue
        reading = found[cls.__name__]
        assert reading.kind == "live" and reading.batch in (BATCH_READ[spec.batch], "unclear"), (cls, reading)
        assert reading.denoiser in ("", spec.denoiser), (cls, reading)


@pytest.mark.parametrize("name, form, batch", [
    ("StableDiffusionPipeline", "u + s(c - u)", "[uncond, cond]"),
    ("FluxPipeline", "u + s(c - u)", "two passes"),
    ("WanPipeline", "u + s(c - u)", "two passes"),  # through `current_model = self.transformer`
    ("Krea2Pipeline", "c + s(c - u)", "two passes"),
    ("Kandinsky3Pipeline", "(s + 1) c - s u", "[uncond, cond]"),
    ("StableCascadePriorPipeline", "lerp", "[cond, uncond]"),
    ("StableDiffusionInstructPix2PixPipeline", "x + s(c - u)", "unclear"),
    ("StableDiffusionXLPAGPipeline", "u + s(c - u)", "[uncond, cond]"),  # in PAGMixin, a base's method
    ("HunyuanVideo15Pipeline", "guider", "guider"),
])
def test_known_readings(census, name, form, batch):
    found, _ = census
    assert (found[name].form, found[name].batch) == (form, batch)


@pytest.mark.parametrize("name", ["FluxFillPipeline", "LatentConsistencyModelPipeline", "KandinskyCombinedPipeline",
                                  "LTXLatentUpsamplePipeline", "AceStepPipeline"])
def test_no_cfg_line(census, name):
    # guidance as an embedding, delegation to sub-pipelines, a mask blend, Diffusers' own APG
    found, _ = census
    assert name not in found


@pytest.mark.parametrize("source, form", [
    ("noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)", "u + s(c - u)"),
    ("(pred - null_pred) * self.guidance_scale + null_pred", "u + s(c - u)"),
    ("cond + s * (cond - uncond)", "c + s(c - u)"),
    ("gw * pos + (1.0 - gw) * neg", "s c + (1 - s) u"),
    ("(guidance_scale + 1.0) * text - guidance_scale * uncond", "(s + 1) c - s u"),
    ("torch.lerp(uncond, text, self.guidance_scale)", "lerp"),
    ("a + 2 * (b - c)", "x + s(c - u)"),
    ("(1 - init_mask) * init_latents + init_mask * latents", None),
    ("x + s * (x - x)", None),
])
def test_forms(source, form):
    found = script._form(ast.parse(source, mode="eval").body)
    assert (found and found[0]) == form


def test_a_mask_blend_is_not_a_scale():
    blend = script._form(ast.parse("m * a + (1 - m) * b", mode="eval").body)
    assert blend and not script._is_scale(blend[2], set())
    assert script._is_scale(ast.parse("gw_i", mode="eval").body, script._guidance_names(
        list(ast.walk(ast.parse("gw = schedule(guidance_scale)\ngw_i = gw[i]")))))


def test_guide_on_a_refused_class_names_the_reason():
    import diffusers

    pipe = object.__new__(diffusers.StableVideoDiffusionPipeline)  # no weights, no __init__: spec_for reads the type
    with pytest.raises(UnsupportedError, match="StableVideoDiffusionPipeline is not supported by apg: per-frame"):
        spec_for(pipe)
    subclass = type("MySVD", (diffusers.StableVideoDiffusionPipeline,), {})
    with pytest.raises(UnsupportedError, match="MySVD is not supported by apg: per-frame guidance scales"):
        spec_for(object.__new__(subclass))
