"""The tables in docs/pipelines.md and docs/guider.md are what scripts/docs_tables.py generates from apg's own tables."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("docs_tables", os.path.join(REPO, "scripts", "docs_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("file", ["docs/pipelines.md", "docs/guider.md"])
def test_tables_are_generated(file):
    script = _script()
    names = script.FILES[file]
    with open(os.path.join(REPO, file), encoding="utf-8", newline="") as f:
        current = f.read()
    wanted = script.render(current, names, file)
    assert wanted == current, (
        f"{file} tables out of date ({', '.join(script.stale_tables(current, wanted, names))}): "
        "run `python scripts/docs_tables.py`"
    )


def test_the_guider_table_lists_what_apg_guider_knows_and_what_its_tests_run():
    from tiny_guider import CASES

    from apg.guider import PIPELINES, QUIRKS, REFUSED

    assert {name for name, listed in PIPELINES.items() if listed.tested} == set(CASES)
    assert set(QUIRKS) <= set(PIPELINES) and not set(REFUSED) & set(PIPELINES)
    table = _script().guider_table()
    assert all(f"| `{name}` |" in table for name in [*PIPELINES, *REFUSED])
    assert "| `Wan22ModularPipeline` | `guider`, `guider_2` | guides in x0; one rule, scale and momentum state " \
           "across both experts | yes |" in table
    assert f"quirk: {QUIRKS['QwenImageEditModularPipeline'].what}; apg does the same" in table


def test_every_registered_stock_pipeline_and_scheduler_has_a_row():
    from apg.registry import STOCK_PIPELINES
    from apg.schedulers import SUPPORTED_SCHEDULERS

    script = _script()
    pipelines, schedulers = script.pipelines_table(), script.schedulers_table()
    assert all(f"| `{name}` |" in pipelines for name in STOCK_PIPELINES)
    assert all(f"| `{name}` |" in schedulers for name in SUPPORTED_SCHEDULERS)
    assert "| `StableDiffusionXLInpaintPipeline` | `unet` | one pass on `[uncond, cond]` | `guidance_scale` | " \
           "`guidance_rescale` re-applied to the guided output | `stable_diffusion_xl_inpaint.py` |" in pipelines


def test_missing_markers_are_an_error_and_the_rest_is_kept():
    script = _script()
    with pytest.raises(ValueError, match="<!-- schedulers:start -->"):
        script.render("<!-- pipelines:start -->\n<!-- pipelines:end -->\n")
    text = "intro\n<!-- pipelines:start -->\nstale table\n<!-- pipelines:end -->\nmiddle\n" \
           "<!-- schedulers:start --><!-- schedulers:end -->\noutro\n"
    out = script.render(text)
    assert out.startswith("intro\n<!-- pipelines:start -->\n| pipeline |") and "\nmiddle\n" in out
    assert out.endswith("<!-- schedulers:end -->\noutro\n") and "stale table" not in out
    assert script.render(out) == out


def test_pipelines_folder_is_generated():
    script = _script()
    drift = script.pipelines_drift(script.pipeline_sources(), os.path.join(REPO, "pipelines"))
    assert drift == {"write": [], "remove": [], "foreign": []}, (
        f"pipelines/ is not what the registry generates ({drift}): run `python scripts/docs_tables.py`")


# The files of pipelines/ before it was generated: users' custom_pipeline= paths, so their names stay.
PUBLISHED = {
    "AuraFlowPipeline": "aura_flow", "ChromaPipeline": "chroma", "CogVideoXPipeline": "cogvideox",
    "CogView4Pipeline": "cogview4", "DiTPipeline": "dit", "FluxPipeline": "flux", "FluxImg2ImgPipeline": "flux_img2img",
    "FluxKontextPipeline": "flux_kontext", "HiDreamImagePipeline": "hidream_image",
    "HunyuanVideoPipeline": "hunyuan_video", "HunyuanDiTPipeline": "hunyuandit",
    "Kandinsky5T2VPipeline": "kandinsky5_t2v", "KolorsPipeline": "kolors", "LTXPipeline": "ltx",
    "LTXImageToVideoPipeline": "ltx_image_to_video", "Lumina2Pipeline": "lumina2",
    "PixArtAlphaPipeline": "pixart_alpha", "PixArtSigmaPipeline": "pixart_sigma", "QwenImagePipeline": "qwenimage",
    "QwenImageEditPipeline": "qwenimage_edit", "SanaPipeline": "sana", "StableDiffusionPipeline": "stable_diffusion",
    "StableDiffusion3Pipeline": "stable_diffusion_3", "StableDiffusion3Img2ImgPipeline": "stable_diffusion_3_img2img",
    "StableDiffusionControlNetPipeline": "stable_diffusion_controlnet",
    "StableDiffusionImg2ImgPipeline": "stable_diffusion_img2img",
    "StableDiffusionInpaintPipeline": "stable_diffusion_inpaint", "StableDiffusionXLPipeline": "stable_diffusion_xl",
    "StableDiffusionXLControlNetPipeline": "stable_diffusion_xl_controlnet",
    "StableDiffusionXLImg2ImgPipeline": "stable_diffusion_xl_img2img",
    "StableDiffusionXLInpaintPipeline": "stable_diffusion_xl_inpaint", "WanPipeline": "wan",
    "WanImageToVideoPipeline": "wan_image_to_video", "ZImagePipeline": "z_image",
}


def test_pipeline_file_names_are_kept_and_derived_from_the_class():
    from apg.registry import REFUSED, STOCK_PIPELINES

    script = _script()
    assert {name: script.pipeline_file(name) for name in PUBLISHED} == {n: f"{f}.py" for n, f in PUBLISHED.items()}
    assert script.pipeline_file("QwenImageEditPlusPipeline") == "qwenimage_edit_plus.py"
    assert script.pipeline_file("StableDiffusionXLControlNetUnionImg2ImgPipeline") == \
        "stable_diffusion_xl_controlnet_union_img2img.py"
    assert script.pipeline_file("StableDiffusion3ControlNetPipeline") == "stable_diffusion_3_controlnet.py"
    assert script.pipeline_file("StableDiffusionXLPAGImg2ImgPipeline") == "stable_diffusion_xl_pag_img2img.py"
    assert script.pipeline_file("Kandinsky5I2VPipeline") == "kandinsky5_i2v.py"
    assert script.pipeline_file("LTX2ConditionPipeline") == "ltx2_condition.py"
    assert script.pipeline_file("IFImg2ImgPipeline") == "deepfloyd_if_img2img.py"
    assert set(script.FILE_NAMES) <= set(STOCK_PIPELINES)
    every = set(STOCK_PIPELINES) | set(REFUSED)  # what the registry may come to guide: one file each
    assert len({script.pipeline_file(name) for name in every}) == len(every)


def test_generated_pipelines_follow_the_registry(tmp_path, monkeypatch):
    """A class added to the registry gets its file, a class dropped loses it, a hand-written file is kept and
    reported; --check only reports."""
    from apg import registry

    script = _script()
    monkeypatch.setitem(registry.STOCK_PIPELINES, "FluxInpaintPipeline",
                        dict(denoiser="transformer", batch="separate", scale_arg="true_cfg_scale",
                             negative_prompt_arg="negative_prompt"))
    (tmp_path / "mine.py").write_text("class Mine: pass\n")
    assert script.sync_pipelines(str(tmp_path), check=False) == 1  # mine.py is reported
    text = (tmp_path / "flux_inpaint.py").read_text()
    assert "class APGFluxInpaintPipeline(GuidancePipelineMixin, FluxInpaintPipeline):" in text
    assert 'custom_pipeline="pipelines/flux_inpaint.py"' in text and "`true_cfg_scale`" in text
    assert (tmp_path / "mine.py").exists() and len(list(tmp_path.glob("*.py"))) == len(registry.STOCK_PIPELINES) + 1
    (tmp_path / "mine.py").unlink()
    assert script.sync_pipelines(str(tmp_path), check=True) == 0
    monkeypatch.delitem(registry.STOCK_PIPELINES, "FluxInpaintPipeline")
    assert script.sync_pipelines(str(tmp_path), check=True) == 1 and (tmp_path / "flux_inpaint.py").exists()
    assert script.sync_pipelines(str(tmp_path), check=False) == 0 and not (tmp_path / "flux_inpaint.py").exists()
    namespace = {}
    exec(compile((tmp_path / "wan.py").read_text(), "wan.py", "exec"), namespace)  # a file that imports and runs
    assert namespace["APGWanPipeline"].__mro__[2].__name__ == "WanPipeline"
