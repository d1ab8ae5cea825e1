"""Cases for the Triton kernels (apg/_triton.py), run by tests/test_triton.py in a child pytest under Triton's
interpreter (TRITON_INTERPRET=1 must be set before triton is first imported, and Diffusers imports it early)."""

import pytest
import torch
from guidance_helpers import pairs, reference

from apg import _triton


TOLERANCE = {torch.float32: 1e-5, torch.float16: 2 * 2**-10, torch.bfloat16: 2 * 2**-7}  # 2 ulp of max |x|


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (3, 5001), (1, 4, 3, 8, 8)], ids=["image", "odd", "video"])
@pytest.mark.parametrize("eta, r, beta", [(0.0, 2.0, -0.5), (0.3, 0.0, 0.0), (1.0, 1.0, -0.75)])
def test_kernels_match_float64(dtype, shape, eta, r, beta):
    conds, unconds = pairs(shape, steps=3, dtype=dtype, device="cpu")
    scales = torch.linspace(2.0, 9.0, shape[0])
    running = None
    expected = reference(conds, unconds, scales, eta=eta, r=r, beta=beta)
    for cond, uncond, ref in zip(conds, unconds, expected):
        out, running = _triton.apg(cond, uncond, running, scales, eta, r, beta)
        assert out.dtype == dtype and out.shape == cond.shape
        assert (out.double() - ref).abs().max() / ref.abs().max() < TOLERANCE[dtype]
    assert (running is None) == (beta == 0)


def test_many_partial_sums_and_a_float_scale_are_deterministic():
    # More than BLOCK * PARTIALS elements: pass 2 loops over its sample's partial sums.
    n = _triton.BLOCK * _triton.PARTIALS + 4097
    (cond,), (uncond,) = pairs((1, n), device="cpu")
    first, _ = _triton.apg(cond, uncond, None, 7.5, 0.0, 15.0, 0.0)
    again, _ = _triton.apg(cond, uncond, None, 7.5, 0.0, 15.0, 0.0)
    assert torch.equal(first, again)
    ref = reference([cond], [uncond], 7.5, r=15.0)[0]
    assert (first.double() - ref).abs().max() / ref.abs().max() < 1e-5


def test_opt_in_and_cuda_only(monkeypatch):
    (cond,), _ = pairs((2, 4, 8, 8), device="cpu")
    monkeypatch.setenv("APG_CUDA_KERNEL", "triton")
    assert not _triton.wanted(cond)  # CPU tensors take the C kernel or the torch ops
    assert _triton.mode() == "triton"
    monkeypatch.setenv("APG_CUDA_KERNEL", "cuda")
    with pytest.raises(ValueError, match="APG_CUDA_KERNEL must be one of .* got 'cuda'"):
        _triton.mode()
