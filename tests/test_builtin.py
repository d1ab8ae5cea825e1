"""The built-in Gaussian-mixture model and its pipeline, against closed forms and the stock CFG line."""

from __future__ import annotations

import importlib.util
import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)
from PIL import Image
from safetensors import safe_open

import apg
from apg.builtin import BUILTIN_PATH, CIFAR10_CLASSES, ClassConditionalPipeline, GaussianMixtureDenoiser, load_builtin
from apg.builtin.fit import main as fit_main
from apg.builtin.pipeline import default_scheduler

from cifar_data import CIFAR10 as DATA
from cifar_data import needs_cifar10


def tiny_model(num_classes=3, rank=3, channels=1, size=4, seed=0, spread=1.0) -> GaussianMixtureDenoiser:
    """A random mixture with an exactly orthonormal float64 basis."""
    gen = torch.Generator().manual_seed(seed)
    dim = channels * size * size
    unet = GaussianMixtureDenoiser(num_classes=num_classes, rank=rank, in_channels=channels, sample_size=size,
                                   class_names=[f"c{k}" for k in range(num_classes)]).double()
    with torch.no_grad():
        unet.means.copy_(spread * 0.3 * torch.randn(num_classes, dim, generator=gen, dtype=torch.float64))
        unet.basis.copy_(torch.linalg.qr(torch.randn(num_classes, dim, rank, generator=gen, dtype=torch.float64))[0])
        unet.variances.copy_(spread * (0.01 + 0.05 * torch.rand(num_classes, rank, generator=gen, dtype=torch.float64)))
        unet.residual_variance.copy_(spread * 0.002 * (1 + torch.rand(num_classes, generator=gen, dtype=torch.float64)))
    return unet


def dense_posterior_mean(unet, y, sigma, label):
    """E[x0 | y = x0 + sigma n] from dense covariances, float64: Bayes over classes for label == K."""
    means, basis = unet.means.double(), unet.basis.double()
    dim = means.shape[1]
    eye = torch.eye(dim, dtype=torch.float64)
    log_probs, posts = [], []
    for k in range(means.shape[0]):
        u = basis[k]
        cov = u @ torch.diag(unet.variances[k].double()) @ u.T + unet.residual_variance[k].double() * (eye - u @ u.T)
        noisy_cov = cov + sigma**2 * eye
        d = y - means[k]
        posts.append(means[k] + cov @ torch.linalg.solve(noisy_cov, d))
        log_probs.append(-0.5 * (d @ torch.linalg.solve(noisy_cov, d) + torch.linalg.slogdet(noisy_cov)[1]))
    if label < means.shape[0]:
        return posts[label]
    weights = torch.softmax(torch.stack(log_probs), 0)
    return sum(w * p for w, p in zip(weights, posts))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_denoiser_matches_dense_posterior_mean(dtype, tol):
    unet = tiny_model()
    alphas_cumprod = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double()  # the model's default schedule
    gen = torch.Generator().manual_seed(1)
    for t in (0, 40, 300, 999):
        abar = alphas_cumprod[t]
        x0 = unet.means[torch.arange(8) % 3] + 0.2 * torch.randn(8, 16, generator=gen, dtype=torch.float64)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(8, 16, generator=gen, dtype=torch.float64)
        labels = torch.tensor([0, 1, 2, 3, 3, 3, 0, 3])  # 3 = unconditional
        noise = unet(x_t.view(8, 1, 4, 4).to(dtype), torch.tensor(t), class_labels=labels).sample.double().view(8, 16)
        sigma = ((1 - abar) / abar).sqrt()
        for i in range(8):
            expected = dense_posterior_mean(unet, x_t[i] / abar.sqrt(), sigma, int(labels[i]))
            expected_noise = (x_t[i] - abar.sqrt() * expected) / (1 - abar).sqrt()
            torch.testing.assert_close(noise[i], expected_noise, rtol=tol, atol=tol)


def test_unconditional_responsibilities_are_stable_at_low_noise():
    # Far from every mean at the smallest noise level the class log-likelihoods are ~1e6 apart: no NaN.
    unet = tiny_model()
    x = 5.0 * torch.ones(2, 1, 4, 4, dtype=torch.float64)
    noise = unet(x, torch.tensor(0), class_labels=torch.tensor([3, 3])).sample
    assert torch.isfinite(noise).all()


def test_fractional_timesteps_give_the_schedulers_sigmas():
    unet = tiny_model()
    scheduler = default_scheduler(unet)  # Karras sigmas: fractional timesteps
    scheduler.set_timesteps(17)
    torch.testing.assert_close(unet.sigma_at(scheduler.timesteps), scheduler.sigmas[:-1].double(), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="1000"):
        unet.sigma_at(torch.tensor([1000.0]))


def reference_sigma(t) -> float:
    """sigma at a (fractional) timestep: log sigma interpolated over the linear-beta DDPM schedule."""
    alphas_cumprod = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double().numpy()
    log_sigmas = np.log(np.sqrt((1 - alphas_cumprod) / alphas_cumprod))
    return float(np.exp(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas)))


@pytest.mark.parametrize("scheduler_cls, kwargs", [
    (EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    (EulerAncestralDiscreteScheduler, {}),
    (DDIMScheduler, {"timestep_spacing": "trailing"}),
    (DPMSolverMultistepScheduler, {}),
    (HeunDiscreteScheduler, {}),
])
def test_pipeline_under_stock_schedulers_matches_a_dense_reference_loop(scheduler_cls, kwargs):
    # The pipeline (low-rank model, CFG w=3) against the same scheduler driven by the dense float64 denoiser.
    unet = tiny_model().float()
    config = default_scheduler(unet).config
    pipe = ClassConditionalPipeline(unet=unet, scheduler=scheduler_cls.from_config(config, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    labels, scale, steps = [0, 2, 1], 3.0, 10
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    images = pipe(class_labels=labels, guidance_scale=scale, num_inference_steps=steps, generator=generators(),
                  output_type="pt").images

    scheduler = scheduler_cls.from_config(config, **kwargs)
    scheduler.set_timesteps(steps)
    gens = generators()
    latents = torch.cat([torch.randn(1, 1, 4, 4, generator=g) for g in gens]) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t).double().view(3, 16)
        sigma = reference_sigma(t)
        y = model_input * math.sqrt(1 + sigma**2)  # x0 + sigma * noise
        noise = []
        for i, label in enumerate(labels):
            cond, uncond = (dense_posterior_mean(unet, y[i], sigma, k) for k in (label, 3))
            noise.append((y[i] - (uncond + scale * (cond - uncond))) / sigma)
        extra = {"generator": gens} if scheduler_cls is EulerAncestralDiscreteScheduler else {}
        latents = scheduler.step(torch.stack(noise).view(3, 1, 4, 4).float(), t, latents, **extra).prev_sample
    torch.testing.assert_close(images, (latents / 2 + 0.5).clamp(0, 1), rtol=1e-3, atol=1e-3)
    assert images.std() > 0.05  # not a degenerate all-clamped output


def test_pipeline_cfg_line_equals_apg_guide_cfg():
    # apg.guide swaps the pipeline's CFG for the guidance object; CFG in x0 space equals CFG on epsilon.
    unet = tiny_model().float()
    pipe = ClassConditionalPipeline(unet=unet, scheduler=default_scheduler(unet))
    pipe.set_progress_bar_config(disable=True)
    labels = [0, 2, "c1"]
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    stock = pipe(class_labels=labels, guidance_scale=6.0, num_inference_steps=12, generator=generators(),
                 output_type="pt").images
    with apg.guide(pipe, apg.CFG(6.0)):
        guided = pipe(class_labels=labels, num_inference_steps=12, generator=generators(), output_type="pt").images
    torch.testing.assert_close(guided, stock, rtol=1e-4, atol=1e-5)
    with apg.guide(pipe, apg.APG(6.0)):
        projected = pipe(class_labels=labels, num_inference_steps=12, generator=generators(), output_type="pt").images
    assert (projected - stock).abs().max() > 1e-3  # APG is not silently CFG


def test_bad_input_names_the_value():
    unet = tiny_model().float()
    pipe = ClassConditionalPipeline(unet=unet, scheduler=default_scheduler(unet))
    with pytest.raises(ValueError, match="'zebra'"):
        pipe.get_label_ids(["c0", "zebra"])
    with pytest.raises(ValueError, match="'zebra'"):
        pipe(class_labels=["zebra"])
    with pytest.raises(ValueError, match=r"class label 3 is out of range"):
        pipe(class_labels=[0, 3])
    with pytest.raises(ValueError, match=r"class label -1 is out of range"):
        pipe(class_labels=[-1])
    for steps in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match=f"num_inference_steps must be an int >= 1, got {steps!r}"):
            pipe(class_labels=[0], num_inference_steps=steps)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[0], output_type="latent")
    with pytest.raises(ValueError, match=r"\[0, 3\].*\[4\]"):
        unet(torch.zeros(1, 1, 4, 4), 10, class_labels=torch.tensor([4]))


def test_shipped_model_loads_small_and_round_trips(tmp_path):
    weights = BUILTIN_PATH / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 16_000_000
    with safe_open(weights, "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    pipe = load_builtin()
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    assert tuple(pipe.unet.config.class_names) == CIFAR10_CLASSES
    assert pipe.get_label_ids(["cat", "ship"]) == [3, 8]
    pipe.set_progress_bar_config(disable=True)
    generators = lambda: [torch.Generator().manual_seed(7)]  # noqa: E731
    before = pipe(class_labels=["cat"], guidance_scale=3.0, num_inference_steps=6, generator=generators(),
                  output_type="np").images
    pipe.save_pretrained(tmp_path)
    for loader in (ClassConditionalPipeline, DiffusionPipeline):
        again = loader.from_pretrained(tmp_path)
        assert type(again) is ClassConditionalPipeline
        again.set_progress_bar_config(disable=True)
        after = again(class_labels=["cat"], guidance_scale=3.0, num_inference_steps=6, generator=generators(),
                      output_type="np").images
        np.testing.assert_allclose(after, before, atol=1e-5)


def _cifar_test_saturation(limit_per_class=100) -> float:
    from apg.evaluation import saturation

    per_class: dict[str, list] = {}
    with tarfile.open(DATA) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == "test":
                images = per_class.setdefault(parts[2], [])
                if len(images) < limit_per_class:
                    images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
    return saturation(np.stack([im for ims in per_class.values() for im in ims]))


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("bench_builtin", Path(__file__).parents[1] / "benchmarks" / "bench_builtin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_cifar10
def test_cfg_oversaturates_and_apg_stays_near_the_data():
    pipe = load_builtin()
    pipe.set_progress_bar_config(disable=True)
    labels = [k for k in range(10) for _ in range(3)]

    sample_stats = _benchmark_module().sample_stats  # the same measurement the rank study reports

    def sample(guidance):
        return sample_stats(pipe, guidance, labels)

    cfg = [sample(apg.CFG(w)) for w in (1.0, 3.0, 15.0)]
    assert cfg[0][0] < cfg[1][0] < cfg[2][0], cfg
    data = _cifar_test_saturation()
    apg15 = sample(apg.APG(15.0, eta=0.0, momentum=-0.5))
    assert abs(apg15[0] - data) < 0.1, (apg15, data)
    assert apg15[0] < cfg[2][0]
    # The burn-out CFG causes and APG avoids (shipped model, 100 samples: 38% vs 3% clipped).
    assert cfg[2][1] > 0.2 and apg15[1] < 0.06, (cfg[2], apg15)


def _write_tiny_archive(path: Path):
    gen = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", 12), ("test", 2)):
            for name in ("b", "a"):  # unsorted on purpose
                for i in range(count):
                    buffer = io.BytesIO()
                    Image.fromarray(gen.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(buffer, "JPEG")
                    info = tarfile.TarInfo(f"tiny/{split}/{name}/{i:04d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)


def test_fit_is_deterministic_and_keeps_the_covariance(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    _write_tiny_archive(archive)
    for out in ("one", "two"):
        fit_main(["--data", str(archive), "--rank", "5", "--out", str(tmp_path / out)])
    files = [(tmp_path / out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() for out in ("one", "two")]
    assert files[0] == files[1]
    unet = ClassConditionalPipeline.from_pretrained(tmp_path / "one").unet.double()
    assert unet.config.class_names == ["a", "b"]
    with tarfile.open(archive) as tar:  # independent decode of class "a"'s training images
        x = np.stack([np.asarray(Image.open(tar.extractfile(m)).convert("RGB"), dtype=np.float64).transpose(2, 0, 1)
                      .reshape(-1) / 127.5 - 1 for m in tar.getmembers() if m.name.startswith("tiny/train/a/")])
    cov = torch.from_numpy(np.cov(x, rowvar=False, bias=True))
    np.testing.assert_allclose(unet.means[0].numpy(), x.mean(0), atol=1e-3)
    basis, variances = unet.basis[0], unet.variances[0]
    torch.testing.assert_close(cov @ basis, basis * variances, atol=2e-3, rtol=2e-3)  # top eigenpairs
    trace = variances.sum() + (x.shape[1] - 5) * unet.residual_variance[0]
    torch.testing.assert_close(trace, torch.trace(cov), rtol=1e-3, atol=0)
