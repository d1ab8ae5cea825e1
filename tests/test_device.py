"""The guidance and apg.guide on the test device (APG_TEST_DEVICE, tests/devices.py), in the dtypes users run.

On the CPU (the default) these run like any test; `APG_TEST_DEVICE=cuda` runs them on the GPU, where apg uses
the torch ops (apg.guidance.apg_torch) instead of the fused CPU kernel.
"""

import pytest
import torch
from guidance_helpers import pairs, reference
from tiny_pipelines import FAMILIES

import apg
from apg import _fused

pytestmark = pytest.mark.usefixtures("single_thread")

# Max error relative to max |reference|: float32 arithmetic, or the output's own rounding (2 ulp of max |x|).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2 * 2**-10, torch.bfloat16: 2 * 2**-7}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (1, 64, 16), (1, 4, 3, 8, 8)], ids=["image", "tokens", "video"])
def test_apg_on_the_device_matches_float64(device, dtype, shape):
    conds, unconds = pairs(shape, steps=3, dtype=dtype, device=device)
    g = apg.APG(7.5, eta=0.3, norm_threshold=2.0, momentum=-0.5)
    outs = [g(c, u) for c, u in zip(conds, unconds)]
    assert all(o.device == conds[0].device and o.dtype == dtype for o in outs)
    assert g._running.device == conds[0].device and g._running.dtype == apg.guidance.compute_dtype(dtype)
    expected = reference([c.cpu() for c in conds], [u.cpu() for u in unconds], 7.5, eta=0.3, r=2.0, beta=-0.5)
    for out, ref in zip(outs, expected):
        err = (out.cpu().double() - ref).abs().max() / ref.abs().max()
        assert err < TOLERANCE[dtype], (dtype, shape, float(err))


def test_per_sample_scales_follow_the_inputs_device(device):
    (cond,), (uncond,) = pairs((3, 4, 8, 8), device=device)
    scales = torch.tensor([1.0, 4.0, 9.0])
    out = apg.APG(scales, momentum=0.0)(cond, uncond)
    expected = reference([cond.cpu()], [uncond.cpu()], scales)[0]
    assert out.device == cond.device
    assert (out.cpu().double() - expected).abs().max() / expected.abs().max() < 1e-5


def test_the_fused_kernel_is_cpu_only(device):
    (cond,), _ = pairs((2, 4, 8, 8), device=device)
    if device.type != "cpu":
        assert _fused.kernel(cond) is None  # GPU tensors take the torch ops


def _dtypes(device):
    # Half-precision convolutions on the CPU are slow and partly unsupported: the pipelines run them on GPUs only.
    return [torch.float32] + ([torch.float16, torch.bfloat16] if device.type == "cuda" else [])


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_guided_pipeline_on_the_device_equals_stock_cfg(device, family):
    build, scale_arg, kwargs = FAMILIES[family]
    pipe = build()
    for dtype in _dtypes(device):
        pipe.to(device, dtype)
        call = dict(kwargs, num_inference_steps=3, output_type="latent")
        stock = pipe(**call, **{scale_arg: 5.0}, generator=torch.Generator().manual_seed(0)).images
        with apg.guide(pipe, apg.APG(5.0, eta=1.0, momentum=0.0)):
            guided = pipe(**call, generator=torch.Generator().manual_seed(0)).images
        with apg.guide(pipe, apg.APG(5.0, norm_threshold=1.0)):
            projected = pipe(**call, generator=torch.Generator().manual_seed(0)).images
        assert guided.device.type == device.type and guided.dtype == dtype
        scale = stock.float().abs().max()
        assert (guided.float() - stock.float()).abs().max() / scale < (1e-4 if dtype == torch.float32 else 2e-2)
        assert (projected.float() - stock.float()).abs().max() / scale > 1e-3  # the hook ran


def test_builtin_model_on_the_device(device):
    pipe = apg.load_builtin().to(device)
    call = dict(class_labels=["cat", "ship"], num_inference_steps=4, output_type="pt")
    stock = pipe(**call, guidance_scale=4.0, generator=torch.Generator().manual_seed(0)).images
    with apg.guide(pipe, apg.CFG(4.0)):
        guided = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert stock.device.type == device.type
    assert (guided - stock).abs().max() < 1e-4
