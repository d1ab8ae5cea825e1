"""The surface around a guided call (issue 19): `with apg.guide(...)` in every form, pickling and copying, a user's
scheduler.step wrapper, Diffusers' CFG cutoff callbacks, a stock sibling inside a guided call, a mixin subclass's
own __call__. References: the same pipeline run stock, or guided imperatively, outside the form under test."""

import contextlib
import copy
import functools
import pathlib
import pickle
import re

import pytest
import torch
from tiny_pipelines import FAMILIES, call, rel_diff, tiny_sd_pipeline

import apg

pytestmark = pytest.mark.usefixtures("single_thread")

W = 5.0
PARITY = dict(eta=1.0, norm_threshold=0.0, momentum=0.0)  # APG == CFG
A, B = apg.APG(W), apg.APG(W, norm_threshold=1.0)


@pytest.fixture(scope="module")
def pipe(single_thread):
    return tiny_sd_pipeline("ddim")


@pytest.fixture(scope="module")
def ref(pipe):
    """Results of the module's pipeline: stock CFG, guided by A, guided by B (set imperatively), all distinct."""
    out = {"stock": call(pipe, "sd", guidance_scale=W)}
    for name, g in (("A", A), ("B", B)):
        apg.guide(pipe, g)
        out[name] = call(pipe, "sd")
    apg.guide(pipe, None)
    assert min(rel_diff(out[x], out[y]) for x, y in (("A", "B"), ("A", "stock"), ("B", "stock"))) > 1e-3
    return out


@pytest.fixture
def stock(pipe):
    """The module's pipeline, stock at the start and checked stock at the end of each test."""
    from diffusers import StableDiffusionPipeline

    yield pipe
    assert type(pipe) is StableDiffusionPipeline and not [k for k in vars(pipe) if k.startswith("_apg")]
    assert "step" not in vars(pipe.scheduler) and not pipe.unet._forward_hooks


def runs_as(pipe, ref, name):
    """Whether `pipe` now gives ref[name] (stock: called with the stock scale)."""
    out = call(pipe, "sd", guidance_scale=W) if name == "stock" else call(pipe, "sd")
    return torch.equal(out, ref[name])


# -- 1. `with apg.guide(...)`: the state from before that call comes back, however the `with` got it ---------------
def guided_by(pipe, guidance):
    """A helper that returns apg.guide's result: the `with` happens in the caller."""
    return apg.guide(pipe, guidance)


@contextlib.contextmanager
def generator_form(pipe, guidance):
    with apg.guide(pipe, guidance):
        yield


FORMS = {
    "direct": lambda pipe, g: apg.guide(pipe, g),
    "conditional": lambda pipe, g, flag=True: (apg.guide(pipe, g) if flag else contextlib.nullcontext()),
    "helper": guided_by,
    "contextmanager": generator_form,
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("before", [None, "A"])
def test_with_restores_the_state_from_before_the_call(stock, ref, form, before):
    if before:
        apg.guide(stock, A)
    with FORMS[form](stock, B):
        assert runs_as(stock, ref, "B")
    assert runs_as(stock, ref, before or "stock")
    apg.guide(stock, None)


def test_with_through_an_exit_stack_and_with_an_exception(stock, ref):
    apg.guide(stock, A)
    with contextlib.ExitStack() as stack:
        stack.enter_context(apg.guide(stock, B))
        assert runs_as(stock, ref, "B")
    assert runs_as(stock, ref, "A")
    with pytest.raises(KeyError, match="inside"):
        with apg.guide(stock, None):
            assert runs_as(stock, ref, "stock")
            raise KeyError("inside")
    assert runs_as(stock, ref, "A")
    apg.guide(stock, None)
    with contextlib.ExitStack() as stack:  # entered, then the stack unwinds on an error
        stack.enter_context(apg.guide(stock, A))
        stack.enter_context(apg.guide(stock, B))
        with pytest.raises(ValueError):
            stack.enter_context(apg.guide(stock, A, space="eps"))  # refused: the state is left as it was (B)
        assert runs_as(stock, ref, "B")


def test_conditional_expression_not_taken_leaves_the_pipeline_alone(stock, ref):
    with FORMS["conditional"](stock, B, flag=False):
        assert runs_as(stock, ref, "stock")
    apg.guide(stock, A)
    with FORMS["conditional"](stock, B, flag=False):
        assert runs_as(stock, ref, "A")
    assert runs_as(stock, ref, "A")
    apg.guide(stock, None)


def test_nested_withs_and_the_handle(stock, ref):
    with apg.guide(stock, A) as entered:
        assert entered is stock
        with apg.guide(stock, B):
            assert runs_as(stock, ref, "B")
        assert runs_as(stock, ref, "A")
    assert runs_as(stock, ref, "stock")
    # The handle stands for the pipeline: called, read and written through; apg.guide takes it as the pipeline.
    handle = apg.guide(stock, A)
    assert torch.equal(call(handle, "sd"), ref["A"]) and handle.unet is stock.unet
    handle.some_setting = 3
    assert vars(stock).pop("some_setting") == 3
    apg.guide(handle, None)
    assert runs_as(stock, ref, "stock")
    # A handle entered later applies its guidance for the block, then restores the state before its call.
    later = apg.guide(stock, A)
    apg.guide(stock, B)
    with later:
        assert runs_as(stock, ref, "A")
    assert runs_as(stock, ref, "stock")


def test_refusals_are_typed_errors(stock):
    from apg.errors import InputError, InputTypeError

    with pytest.raises(InputError, match="space='raw' was passed without a guidance"):
        apg.guide(stock, None, space="raw")
    with pytest.raises(InputError, match="space must be one of"):
        apg.guide(stock, A, space="eps")
    with pytest.raises(InputTypeError, match="guidance must be an apg.Guidance"):
        apg.guide(stock, 7.5)
    with apg.guide(stock, A), pytest.raises(InputError, match="guidance_scale=7.0 was passed"):
        call(stock, "sd", guidance_scale=7.0)


def test_bare_with_on_a_guided_pipeline_keeps_its_guidance(stock, ref):
    apg.guide(stock, A)
    with stock:
        assert runs_as(stock, ref, "A")
        apg.guide(stock, B)
    assert runs_as(stock, ref, "A")
    with stock:
        apg.guide(stock, None)
        assert runs_as(stock, ref, "stock")
    assert runs_as(stock, ref, "A")
    apg.guide(stock, None)


def test_no_frame_or_bytecode_inspection_in_apg():
    root = pathlib.Path(apg.__file__).parent
    pattern = re.compile(r"\bimport dis\b|_getframe|f_lasti|f_back|currentframe|inspect\.stack|get_instructions")
    hits = [f"{p}:{m.group()}" for p in root.rglob("*.py") for m in pattern.finditer(p.read_text())]
    assert not hits


# -- 2. pickling and copying ------------------------------------------------------------------------------------
@pytest.mark.parametrize("clone", ["pickle", "deepcopy"])
def test_guided_and_restored_pipelines_pickle_and_copy(stock, ref, clone, tmp_path):
    from diffusers import StableDiffusionPipeline

    duplicate = {"pickle": lambda p: pickle.loads(pickle.dumps(p)), "deepcopy": copy.deepcopy}[clone]
    with apg.guide(stock, A):
        guided = duplicate(stock)
    assert isinstance(guided, StableDiffusionPipeline) and type(guided).__name__ == "StableDiffusionPipeline"
    assert guided.unet is not stock.unet and guided._apg_guidance is not A
    assert runs_as(guided, ref, "A")
    with pytest.raises(ValueError, match="guidance_scale=5.0 was passed"):  # guided: the stock scale is refused
        call(guided, "sd", guidance_scale=W)
    guided.save_pretrained(tmp_path)
    assert '"_class_name": "StableDiffusionPipeline"' in (tmp_path / "model_index.json").read_text()
    apg.guide(guided, None)
    assert type(guided) is StableDiffusionPipeline and runs_as(guided, ref, "stock")

    apg.guide(stock, A)
    apg.guide(stock, None)
    restored = duplicate(stock)
    assert type(restored) is StableDiffusionPipeline and runs_as(restored, ref, "stock")


def test_pickling_inside_a_bare_with_keeps_its_saved_state(stock, ref):
    apg.guide(stock, A)
    with stock:
        apg.guide(stock, B)
        inner = pickle.loads(pickle.dumps(stock))
    apg.guide(stock, None)
    assert runs_as(inner, ref, "B")
    inner.__exit__(None, None, None)  # the copy's own saved state: A
    assert runs_as(inner, ref, "A")


# -- 3. a user's wrapper on the scheduler's step -------------------------------------------------------------------
def logging_wrapper(step, seen, keep_signature):
    """A preview/logging tool's wrapper: records each model_output it is stepped with."""

    def logged(*args, **kwargs):
        seen.append((args[0] if args else kwargs["model_output"]).clone())
        return step(*args, **kwargs)

    return functools.wraps(step)(logged) if keep_signature else logged


@pytest.mark.parametrize("keep_signature", [True, False], ids=["wraps", "bare"])
def test_a_users_step_wrapper_runs_inside_a_guided_call(keep_signature):
    """Euler ancestral: with functools.wraps the pipeline passes the generator to step(), without it it does not."""
    pipe = tiny_sd_pipeline("euler_a")

    def run(guidance=None):
        seen = []
        pipe.scheduler.step = wrapper = logging_wrapper(pipe.scheduler.step, seen, keep_signature)
        with apg.guide(pipe, guidance) if guidance else contextlib.nullcontext():
            out = call(pipe, "sd", **({} if guidance else {"guidance_scale": W}))
        assert pipe.scheduler.step is wrapper  # still in place after the call
        del pipe.scheduler.step
        return out, seen

    stock, stock_seen = run()
    parity, parity_seen = run(apg.APG(W, **PARITY))
    assert rel_diff(parity, stock) <= 1e-4 and len(parity_seen) == len(stock_seen) == 2
    for guided_output, stock_output in zip(parity_seen, stock_seen):  # the wrapper gets the guided output
        assert rel_diff(guided_output, stock_output) <= 1e-3  # eps through x0 and back at sigma ~ 15: float32
    guided, guided_seen = run(A)
    assert rel_diff(guided_seen[-1], stock_seen[-1]) > 1e-2
    with apg.guide(pipe, A):
        unwrapped = call(pipe, "sd")
    # functools.wraps keeps step's signature, so the pipeline passes the generator as without a wrapper; a bare
    # wrapper hides it, from the stock and the guided call alike.
    assert torch.equal(guided, unwrapped) == torch.equal(stock, call(pipe, "sd", guidance_scale=W)) == keep_signature


# -- 4. Diffusers' CFG cutoff callbacks ------------------------------------------------------------------------------
@pytest.mark.parametrize("family, form", [("sd", "callback"), ("sd", "multi"), ("sdxl", "callback")])
def test_cfg_cutoff_callbacks_leave_the_steps_after_the_cutoff_unguided(family, form):
    from diffusers.callbacks import MultiPipelineCallbacks, SDCFGCutoffCallback, SDXLCFGCutoffCallback

    pipe = FAMILIES[family][0]()
    cls = {"sd": SDCFGCutoffCallback, "sdxl": SDXLCFGCutoffCallback}[family]
    cutoff = cls(cutoff_step_ratio=None, cutoff_step_index=0)  # CFG at step 0 only
    callback = MultiPipelineCallbacks([cutoff]) if form == "multi" else cutoff
    steps = 4

    def run(**kwargs):
        return call(pipe, family, steps=steps, callback_on_step_end=callback, **kwargs)

    stock = run(guidance_scale=W)
    assert rel_diff(stock, call(pipe, family, steps=steps, guidance_scale=W)) > 1e-3  # the cutoff acts
    with apg.guide(pipe, apg.APG(W, **PARITY)):
        assert rel_diff(run(), stock) <= 1e-4

    class Recording(apg.APG):
        steps = []

        def __call__(self, pred_cond, pred_uncond, *, sigma=None, step=None):
            self.steps.append(step)
            return super().__call__(pred_cond, pred_uncond, sigma=sigma, step=step)

    with apg.guide(pipe, Recording(W, momentum=-0.5)):  # momentum sits out after the cutoff: no call at all
        run()
    assert Recording.steps == [0]


# -- 5. a stock (or guided) sibling sharing the denoiser and the scheduler, run inside a guided call's callback ------
@pytest.mark.parametrize("sibling_guidance", [None, B], ids=["stock", "guided"])
def test_a_sibling_run_inside_the_callback_leaves_both_runs_intact(stock, ref, sibling_guidance):
    from diffusers import StableDiffusionPipeline

    sibling = StableDiffusionPipeline.from_pipe(stock)
    assert sibling.unet is stock.unet and sibling.scheduler is stock.scheduler  # DDIM: no state across calls
    scale = {} if sibling_guidance else {"guidance_scale": W}
    apg.guide(sibling, sibling_guidance)
    alone = call(sibling, "sd", seed=3, **scale)
    inner = []

    def run_sibling(pipe, i, t, tensors):
        if i == 0:
            inner.append(call(sibling, "sd", seed=3, **scale))
        return tensors

    with apg.guide(stock, A):
        outer = call(stock, "sd", callback_on_step_end=run_sibling)
    apg.guide(sibling, None)
    assert torch.equal(outer, ref["A"]) and torch.equal(inner[0], alone)


# -- 6. a mixin subclass keeps its own __call__ -------------------------------------------------------------------
def test_mixin_subclass_keeps_its_own_call(stock, ref):
    from diffusers import StableDiffusionPipeline

    calls = []

    class Counting(apg.GuidancePipelineMixin, StableDiffusionPipeline):
        def __call__(self, *args, **kwargs):
            calls.append(kwargs.get("guidance"))
            return super().__call__(*args, **kwargs)

    class Sub(Counting):  # inherits Counting's __call__, not a generated one
        pass

    assert Counting.__call__ is vars(Counting)["__call__"] and Sub.__call__ is Counting.__call__
    pipe = Sub.from_pipe(stock)
    assert torch.equal(call(pipe, "sd", guidance=A), ref["A"]) and calls == [A]
    with apg.guide(pipe, B):
        assert torch.equal(call(pipe, "sd"), ref["B"]) and calls == [A, None]
    assert type(pipe) is Sub and torch.equal(call(pipe, "sd", guidance_scale=W), ref["stock"])
    assert len(calls) == 3

