"""The README's "Comparing with other implementations" rows for Diffusers, checked on the same tensors
against the installed Diffusers' own AdaptiveProjectedGuidance guider (its state reset included)."""

from __future__ import annotations

import pytest
import torch

import apg

diffusers_guiders = pytest.importorskip("diffusers.guiders")

STEPS = 4
S = 5.0  # Diffusers' guidance_scale


def _tensors(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[2, 4, 8, 8] raw outputs whose difference has norm ~ 30 per sample: a threshold of 15 is active."""
    g = torch.Generator().manual_seed(step)
    cond = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    return cond, cond + 1.3 * torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)


def _theirs(**config) -> list[torch.Tensor]:
    guider = diffusers_guiders.AdaptiveProjectedGuidance(**config)
    out = []
    for step in range(STEPS):
        guider.set_state(step, STEPS, torch.tensor(999 - step))
        guider.prepare_inputs({})  # what a pipeline calls each step; it creates the momentum buffer at step 0
        out.append(guider.forward(*_tensors(step)).pred)
    return out


def _ours(guidance: apg.Guidance) -> list[torch.Tensor]:
    return [guidance(*_tensors(step)) for step in range(STEPS)]


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-6, atol=1e-6) for x, y in zip(a, b))


def test_original_formulation_equals_apg_at_w_s_plus_1_only_with_all_three_settings_explicit():
    explicit = dict(guidance_scale=S, use_original_formulation=True, eta=0.0, adaptive_projected_guidance_rescale=15.0,
                    adaptive_projected_guidance_momentum=-0.5)
    assert _close(_theirs(**explicit), _ours(apg.APG(S + 1, eta=0.0, norm_threshold=15.0, momentum=-0.5)))
    # Diffusers' defaults are eta 1, threshold 15 and no momentum; apg.APG's are eta 0, r 0, beta -0.5.
    defaults = _theirs(guidance_scale=S, use_original_formulation=True)
    assert _close(defaults, _ours(apg.APG(S + 1, eta=1.0, norm_threshold=15.0, momentum=0.0)))
    assert not _close(defaults, _ours(apg.APG(S + 1)))


def test_default_formulation_is_apg_with_a_rescaled_eta_only_without_momentum_and_an_active_threshold():
    eta = 0.6
    eta_prime = (S * eta - 1) / (S - 1)  # 0.5
    plain = dict(guidance_scale=S, eta=eta, adaptive_projected_guidance_rescale=0.0)
    assert _close(_theirs(**plain), _ours(apg.APG(S, eta=eta_prime, norm_threshold=0.0, momentum=0.0)))
    # "At eta = 1 it is CFG(s)": true without momentum and threshold...
    assert _close(_theirs(guidance_scale=S, eta=1.0, adaptive_projected_guidance_rescale=0.0), _ours(apg.CFG(S)))
    # ... and not with either: the default formulation adds s * update to pred_uncond, not to pred_cond.
    with_momentum = _theirs(**plain, adaptive_projected_guidance_momentum=-0.5)
    assert not _close(with_momentum, _ours(apg.APG(S, eta=eta_prime, norm_threshold=0.0, momentum=-0.5)))
    with_threshold = _theirs(guidance_scale=S, eta=eta)  # Diffusers' default threshold 15, active here
    assert not _close(with_threshold, _ours(apg.APG(S, eta=eta_prime, norm_threshold=15.0, momentum=0.0)))
    assert not _close(_theirs(guidance_scale=S, eta=1.0), _ours(apg.CFG(S)))


def test_diffusers_default_eta_0_needs_a_negative_eta_prime_outside_apg_bounds():
    # eta' = (s * 0 - 1) / (s - 1) < 0: the default formulation at eta = 0 has no apg.APG equivalent.
    with pytest.raises(ValueError, match=r"eta must be in \[0.0, 1.0\]"):
        apg.APG(S, eta=(S * 0.0 - 1) / (S - 1))
