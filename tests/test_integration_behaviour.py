"""apg.guide and the pipeline mixin: API, state, Diffusers features, invisibility of the wrapper, errors."""

import inspect
import os

import pytest
import torch
from tiny_pipelines import (
    call,
    make_scheduler,
    rel_diff,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
)

import apg
from apg.registry import register_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")

W = 5.0
PARITY = dict(eta=1.0, norm_threshold=0.0, momentum=0.0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sd(single_thread):
    return tiny_sd_pipeline("euler_a")  # ancestral: the generator must reach step()


@pytest.fixture(scope="module")
def reference(sd):
    """Stock CFG and guided APG results of the module's pipeline, computed once."""
    stock = call(sd, "sd", guidance_scale=W)
    with apg.guide(sd, apg.APG(W)):
        guided = call(sd, "sd")
    assert rel_diff(guided, stock) > 1e-2
    return {"stock": stock, "apg": guided}


def assert_clean(pipe):
    assert "step" not in pipe.scheduler.__dict__
    assert not pipe.unet._forward_hooks


# -- apg.guide: in place, None, context manager -------------------------------------------------------------
def test_guide_in_place_none_and_context_manager(sd, reference):
    from diffusers import StableDiffusionPipeline

    handle = apg.guide(sd, apg.APG(W))  # the handle of this call; it stands for the pipeline
    assert handle.pipeline is sd and handle.unet is sd.unet
    assert isinstance(sd, StableDiffusionPipeline) and type(sd).__name__ == "StableDiffusionPipeline"
    assert torch.equal(call(sd, "sd"), reference["apg"])
    apg.guide(sd, None)
    assert type(sd) is StableDiffusionPipeline and "_apg_guidance" not in sd.__dict__  # stock in every respect
    assert torch.equal(call(sd, "sd", guidance_scale=W), reference["stock"])
    apg.guide(sd, apg.APG(W))
    with apg.guide(sd, apg.CFG(W)) as inner:  # previous state (APG) comes back on exit
        assert inner is sd
        assert rel_diff(call(sd, "sd"), reference["stock"]) <= 1e-4
    assert torch.equal(call(sd, "sd"), reference["apg"])
    with apg.guide(sd, None):
        assert torch.equal(call(sd, "sd", guidance_scale=W), reference["stock"])
    assert torch.equal(call(sd, "sd"), reference["apg"])
    apg.guide(sd, None)
    assert_clean(sd)


def test_context_manager_restores_the_stock_class_and_signature_shows_stock_parameters():
    from diffusers import StableDiffusionPipeline

    pipe = tiny_sd_pipeline()
    with apg.guide(pipe, apg.APG(W)):
        assert type(pipe) is not StableDiffusionPipeline
        parameters = inspect.signature(pipe.__call__).parameters
        assert {"prompt", "negative_prompt", "guidance_rescale", "guidance", "guidance_space"} <= set(parameters)
    assert type(pipe) is StableDiffusionPipeline and not any(k.startswith("_apg") for k in pipe.__dict__)


def test_per_sample_scales_guide_each_sample_with_its_own_scale(sd):
    scales = [3.0, 6.0]
    prompts = dict(prompt=["a photo of a cat", "a red car"], negative_prompt=["", "a tree"])

    def run(**kwargs):  # per-sample generators: sample i sees the same noise in every run
        generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
        return sd(**prompts, height=32, width=32, num_inference_steps=2, output_type="latent", generator=generators,
                  **kwargs)[0]

    stock = [run(guidance_scale=w)[i] for i, w in enumerate(scales)]
    with apg.guide(sd, apg.APG(torch.tensor(scales), **PARITY)):
        guided = run()
    for i in range(2):
        assert rel_diff(guided[i], stock[i]) <= 1e-4


def test_flux_without_negative_prompt_runs_its_uncond_pass_with_an_empty_one():
    from tiny_pipelines import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    stock = call(pipe, "flux", true_cfg_scale=W, negative_prompt="")
    with apg.guide(pipe, apg.APG(W, **PARITY)):
        assert rel_diff(call(pipe, "flux", negative_prompt=None), stock) <= 1e-4
        with pytest.raises(ValueError, match="true_cfg_scale=2.0 was passed"):
            call(pipe, "flux", true_cfg_scale=2.0)


def test_explicit_guidance_scale_raises(sd):
    with apg.guide(sd, apg.APG(W)):
        with pytest.raises(ValueError, match=r"guidance_scale=7\.0 was passed .* the guidance's own scale governs"):
            call(sd, "sd", guidance_scale=7.0)
    assert_clean(sd)


def test_saved_pipeline_records_the_stock_class(sd, tmp_path):
    with apg.guide(sd, apg.APG(W)):
        sd.save_pretrained(tmp_path)
    assert '"_class_name": "StableDiffusionPipeline"' in (tmp_path / "model_index.json").read_text()


# -- state ----------------------------------------------------------------------------------------------------
def test_momentum_resets_every_call_and_the_callers_object_is_untouched(sd, reference):
    g = apg.APG(W)
    g(torch.ones(1, 4, 16, 16), torch.zeros(1, 4, 16, 16))  # leftover momentum from earlier use
    with apg.guide(sd, g):
        first, second = call(sd, "sd"), call(sd, "sd")
    assert torch.equal(first, second) and torch.equal(first, reference["apg"])
    assert torch.equal(g._running, torch.ones(1, 4, 16, 16))  # the call used its own copy


def test_two_pipelines_guided_at_once_keep_separate_state(sd, reference):
    """B runs inside A's step callback, sharing A's UNet (from_pipe) and the very same guidance object."""
    g = apg.APG(W)
    other = type(sd).from_pipe(sd, scheduler=make_scheduler("ddim"))
    apg.guide(other, g)
    alone = call(other, "sd", seed=3)
    inner = []

    def run_other(pipe, i, t, tensors):
        if i == 0:
            inner.append(call(other, "sd", seed=3))
        return tensors

    with apg.guide(sd, g):
        outer = call(sd, "sd", callback_on_step_end=run_other)
    apg.guide(other, None)
    assert torch.equal(outer, reference["apg"]) and torch.equal(inner[0], alone)


def test_failing_call_leaves_the_pipeline_as_it_was(sd, reference):
    def fail(pipe, i, t, tensors):
        if i == 1:
            raise RuntimeError("stop here")
        return tensors

    with apg.guide(sd, apg.APG(W)):
        with pytest.raises(RuntimeError, match="stop here"):
            call(sd, "sd", callback_on_step_end=fail)
        assert_clean(sd)
        assert torch.equal(call(sd, "sd"), reference["apg"])
    assert torch.equal(call(sd, "sd", guidance_scale=W), reference["stock"])


# -- Diffusers features ---------------------------------------------------------------------------------------
def test_guidance_rescale_and_callback_keep_working(sd, reference):
    def shrink(pipe, i, t, tensors):
        return {"latents": tensors["latents"] * 0.9}

    extra = dict(guidance_rescale=0.7, callback_on_step_end=shrink, callback_on_step_end_tensor_inputs=["latents"])
    stock = call(sd, "sd", guidance_scale=W, **extra)
    assert rel_diff(stock, reference["stock"]) > 1e-2  # both features change the stock result
    with apg.guide(sd, apg.APG(W, **PARITY)):
        assert rel_diff(call(sd, "sd", **extra), stock) <= 1e-4


def test_wrapper_is_invisible_to_the_pipeline(sd, tmp_path):
    """Inside a guided call: same scheduler object and class, step signature, config and saved config."""
    scheduler = sd.scheduler
    scheduler.save_pretrained(tmp_path / "before")
    stock_signature = inspect.signature(scheduler.step)
    seen = {}

    def inspect_scheduler(pipe, i, t, tensors):
        s = pipe.scheduler
        seen.update(
            same=s is scheduler, cls=type(s), wrapped="step" in s.__dict__, signature=inspect.signature(s.step),
            order=s.order, step_index=s.step_index, config=dict(s.config),
        )
        s.save_pretrained(tmp_path / "during")
        return tensors

    with apg.guide(sd, apg.APG(W)):
        call(sd, "sd", callback_on_step_end=inspect_scheduler)
    assert seen["same"] and seen["cls"] is type(scheduler) and seen["wrapped"]
    assert seen["signature"] == stock_signature and {"generator", "return_dict"} <= set(seen["signature"].parameters)
    assert seen["order"] == scheduler.order and seen["step_index"] == 2 and seen["config"] == dict(scheduler.config)
    assert (tmp_path / "during" / "scheduler_config.json").read_text() == (
        tmp_path / "before" / "scheduler_config.json").read_text()
    assert_clean(sd)


def test_cpu_offload_hooks_keep_working(reference):
    """accelerate's offload hooks (what enable_*_cpu_offload installs) with the CPU as the execution device."""
    from accelerate import cpu_offload

    pipe = tiny_sd_pipeline("euler_a")
    cpu_offload(pipe.unet, execution_device=torch.device("cpu"))  # weights offloaded, loaded per forward
    assert hasattr(pipe.unet, "_hf_hook")
    with apg.guide(pipe, apg.APG(W)):
        assert rel_diff(call(pipe, "sd"), reference["apg"]) <= 1e-5


def test_torch_compile_of_the_denoiser_keeps_working(reference):
    """torch.compile with the cheap "eager" backend (Dynamo tracing, no codegen) to keep the suite fast."""
    pipe = tiny_sd_pipeline("euler_a")
    pipe.unet = torch.compile(pipe.unet, backend="eager", fullgraph=False)
    with apg.guide(pipe, apg.APG(W)):
        assert rel_diff(call(pipe, "sd"), reference["apg"]) <= 1e-5


# -- mixin, pipelines/, custom pipelines ----------------------------------------------------------------------
def test_pipelines_folder_loads_as_custom_pipeline_and_from_pipe(sd, reference, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    sd.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(
        tmp_path, custom_pipeline=os.path.join(REPO, "pipelines", "stable_diffusion.py"), trust_remote_code=True
    )
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "APGStableDiffusionPipeline" and isinstance(loaded, StableDiffusionPipeline)
    assert torch.equal(call(loaded, "sd", guidance=apg.APG(W)), reference["apg"])
    assert torch.equal(call(loaded, "sd", guidance_scale=W), reference["stock"])  # no guidance: stock
    via_from_pipe = type(loaded).from_pipe(sd)
    assert torch.equal(call(via_from_pipe, "sd", guidance=apg.APG(W)), reference["apg"])
    back = StableDiffusionPipeline.from_pipe(loaded)
    assert type(back) is StableDiffusionPipeline


PIPELINE_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "pipelines")) if f.endswith(".py"))


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_each_pipelines_file_defines_one_supported_class(name):
    import importlib.util

    from diffusers.utils.dynamic_modules_utils import find_pipeline_class

    import re

    import diffusers

    path = os.path.join(REPO, "pipelines", f"{name}.py")
    with open(path) as file:
        stock = re.search(r"^from diffusers import (\w+)$", file.read(), re.M).group(1)
    if stock not in dir(diffusers):
        pytest.skip(f"Diffusers {diffusers.__version__} has no {stock} (a newer release has)")
    spec = importlib.util.spec_from_file_location(f"apg_pipelines_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = find_pipeline_class(module)  # what custom_pipeline= loading uses: exactly one pipeline class
    assert issubclass(cls, apg.GuidancePipelineMixin)
    assert "guidance" in inspect.signature(cls.__call__).parameters
    from apg.registry import spec_for as _spec_for

    _spec_for(cls.__new__(cls))  # registered family: raises if not


def test_mixin_per_call_guidance_raw_space_and_errors(sd, reference):
    from diffusers import StableDiffusionPipeline

    cls = type("APGStableDiffusionPipeline", (apg.GuidancePipelineMixin, StableDiffusionPipeline), {})
    pipe = cls.from_pipe(sd)
    assert torch.equal(call(pipe, "sd", guidance=apg.APG(W)), reference["apg"])
    raw = call(pipe, "sd", guidance=apg.APG(W), guidance_space="raw")
    assert rel_diff(raw, reference["apg"]) > 1e-3
    with pytest.raises(ValueError, match="guidance_space='raw' was passed without a guidance"):
        call(pipe, "sd", guidance_space="raw")
    with pytest.raises(ValueError, match=r"space must be one of \('x0', 'raw'\), got 'eps'"):
        call(pipe, "sd", guidance=apg.APG(W), guidance_space="eps")


# -- errors ---------------------------------------------------------------------------------------------------
def test_unsupported_scheduler_is_named_with_the_supported_list(sd):
    from diffusers import IPNDMScheduler

    previous = sd.scheduler
    sd.scheduler = IPNDMScheduler()
    try:
        with pytest.raises(ValueError, match=r"scheduler IPNDMScheduler is not supported .*'DDIMScheduler'"):
            apg.guide(sd, apg.APG(W))
        sd.scheduler = previous
        with apg.guide(sd, apg.APG(W)):  # swapped after guide(): the call refuses before running
            sd.scheduler = IPNDMScheduler()
            with pytest.raises(ValueError, match="IPNDMScheduler is not supported"):
                call(sd, "sd")
    finally:
        sd.scheduler = previous
    sd.scheduler = make_scheduler("euler", "flow_prediction")
    try:
        with pytest.raises(ValueError, match=r"prediction_type 'flow_prediction' of EulerDiscreteScheduler .*'sample'"):
            apg.guide(sd, apg.APG(W))
    finally:
        sd.scheduler = previous
    assert_clean(sd)


def test_unsupported_pipeline_and_bad_arguments(sd):
    from diffusers import DiffusionPipeline

    class OddPipeline(DiffusionPipeline):
        def __call__(self):
            return None

    with pytest.raises(ValueError, match=r"pipeline OddPipeline is not supported .*\[.*'FluxPipeline'"):
        apg.guide(OddPipeline(), apg.APG(W))
    with pytest.raises(TypeError, match="guidance must be an apg.Guidance"):
        apg.guide(sd, 7.5)
    with pytest.raises(ValueError, match="space must be one of"):
        apg.guide(sd, apg.APG(W), space="eps")
    with pytest.raises(ValueError, match="batch must be one of"):
        register_pipeline(OddPipeline, denoiser="unet", batch="interleaved")


def test_pattern_mismatch_is_an_error_not_plain_cfg():
    """SD3 skip-layer guidance adds a third transformer pass per step: apg refuses instead of guessing."""
    pipe = tiny_sd3_pipeline()
    with apg.guide(pipe, apg.APG(W)):
        with pytest.raises(RuntimeError, match=r"expected 1 transformer evaluation\(s\) before each scheduler.step"):
            call(pipe, "sd3", skip_guidance_layers=[0], skip_layer_guidance_stop=1.0)
    assert "step" not in pipe.scheduler.__dict__ and not pipe.transformer._forward_hooks


# -- register_pipeline: a class-conditional pixel-space pipeline of the built-in model's shape -----------------
def _tiny_class_pipeline(scheduler):
    from diffusers import DiffusionPipeline, UNet2DModel

    class TinyClassConditionalPipeline(DiffusionPipeline):
        def __init__(self, unet, scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)

        @torch.no_grad()
        def __call__(self, class_labels, guidance_scale=4.0, num_inference_steps=2, generator=None):
            labels = torch.tensor(class_labels)
            null = torch.full_like(labels, self.unet.config.num_class_embeds - 1)
            x = torch.randn((len(labels), 3, 8, 8), generator=generator) * self.scheduler.init_noise_sigma
            self.scheduler.set_timesteps(num_inference_steps)
            for t in self.scheduler.timesteps:
                model_input = self.scheduler.scale_model_input(torch.cat([x, x]), t)
                both = self.unet(model_input, t, class_labels=torch.cat([null, labels])).sample
                pred_uncond, pred_cond = both.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                x = self.scheduler.step(pred, t, x, generator=generator).prev_sample
            return x

    register_pipeline(TinyClassConditionalPipeline, denoiser="unet", batch="uncond_first")
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=11,
    ).eval()
    return TinyClassConditionalPipeline(unet, make_scheduler(scheduler))


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m_sde"])
def test_registered_class_conditional_pipeline(scheduler):
    pipe = _tiny_class_pipeline(scheduler)
    def run(**kwargs):
        return pipe([1, 4], num_inference_steps=3, generator=torch.Generator().manual_seed(0), **kwargs)

    stock = run(guidance_scale=W)
    with apg.guide(pipe, apg.APG(W, **PARITY)):
        assert rel_diff(run(), stock) <= 1e-4
    with apg.guide(pipe, apg.APG(W, norm_threshold=1.0)):
        assert rel_diff(run(), stock) > 1e-3
    assert "step" not in pipe.scheduler.__dict__ and not pipe.unet._forward_hooks


def test_half_precision_pipeline_keeps_its_dtype_and_matches_stock():
    """bfloat16 end to end (x0 math runs in float32 inside the wrapper); parity at bfloat16's precision."""
    pipe = tiny_sd_pipeline("dpmpp_2m").to(torch.bfloat16)
    stock = call(pipe, "sd", guidance_scale=W)
    with apg.guide(pipe, apg.APG(W, **PARITY)):
        guided = call(pipe, "sd")
    assert guided.dtype == torch.bfloat16
    assert rel_diff(guided, stock) <= 1e-2  # bfloat16 rounding; APG itself moves the result by ~5e-2
    with apg.guide(pipe, apg.APG(W)):
        assert rel_diff(call(pipe, "sd"), stock) > 2e-2
