"""apg.evaluation metrics: saturation and the Frechet distance against closed forms and independent code."""

import colorsys

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from apg.evaluation import frechet_distance, saturation


def solid(rgb, size=(4, 3)):
    return Image.new("RGB", size, rgb)


# ------------------------------------------------------------------------------------------------ saturation


@pytest.mark.parametrize("rgb, expected", [((255, 0, 0), 1.0), ((0, 0, 0), 0.0), ((128, 128, 128), 0.0),
                                           ((255, 255, 255), 0.0), ((255, 128, 128), 127 / 255)])
def test_saturation_known_values_in_every_input_format(rgb, expected):
    pixel = np.array(rgb, dtype=np.uint8)
    formats = {
        "pil": solid(rgb),
        "numpy uint8 HWC": np.broadcast_to(pixel, (3, 5, 3)).copy(),
        "numpy float NHWC": np.broadcast_to(pixel / 255.0, (2, 3, 5, 3)).copy(),
        "torch uint8 CHW": torch.tensor(pixel)[:, None, None].expand(3, 2, 2).clone(),
        "torch float NCHW": (torch.tensor(pixel, dtype=torch.float64) / 255)[None, :, None, None].expand(2, 3, 2, 2),
        "list": [solid(rgb), solid(rgb, (7, 7))],
    }
    for name, images in formats.items():
        assert saturation(images) == pytest.approx(expected, abs=1e-12), name
    assert round(saturation(solid((255, 128, 128))), 3) == 0.498


def test_saturation_matches_colorsys_hsv_on_random_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 6, 5, 3), dtype=np.uint8)
    pixels[0, 0, 0] = 0  # a black pixel: S = 0 by definition
    per_image = [np.mean([colorsys.rgb_to_hsv(*(p / 255.0))[1] for p in image.reshape(-1, 3)]) for image in pixels]
    assert saturation(pixels) == pytest.approx(np.mean(per_image), abs=1e-12)
    assert saturation(torch.from_numpy(pixels).permute(0, 3, 1, 2)) == pytest.approx(np.mean(per_image), abs=1e-12)


def test_saturation_averages_pixels_then_images():
    half = np.zeros((2, 2, 3), np.uint8)
    half[0] = (255, 0, 0)  # half red (S = 1), half grey (S = 0)
    half[1] = (90, 90, 90)
    assert saturation(half) == pytest.approx(0.5)
    # One small red image and one large grey one: images weigh equally, whatever their pixel count.
    assert saturation([solid((255, 0, 0), (1, 1)), solid((9, 9, 9), (50, 50))]) == pytest.approx(0.5)


def test_saturation_rejects_ambiguous_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\].*\(x \+ 1\) / 2"):
        saturation(torch.full((1, 3, 2, 2), -0.5))
    with pytest.raises(ValueError, match="3 colour channels"):
        saturation(np.zeros((2, 3, 4), np.uint8))  # channel-first numpy: channels last expected
    with pytest.raises(ValueError, match="shape"):
        saturation(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="images"):
        saturation("red.png")
    with pytest.raises(ValueError, match="empty"):
        saturation([])


# ------------------------------------------------------------------------------------------ frechet_distance


def sqrtm_reference(mu1, sigma1, mu2, sigma2):
    """The textbook formula with scipy's sqrtm, in float64 (pytorch-fid's route)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def random_spd(rng, dim, rank=None):
    a = rng.normal(size=(dim, rank or dim))
    return a @ a.T / dim


def test_frechet_distance_univariate_and_diagonal_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    var1, var2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)
    # Same eigenvectors (commuting covariances): the diagonal formula in a rotated basis.
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_sqrtm_on_non_commuting_covariances():
    rng = np.random.default_rng(2)
    for dim in (2, 8, 64):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        sigma1, sigma2 = random_spd(rng, dim), random_spd(rng, dim)
        assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
            sqrtm_reference(mu1, sigma1, mu2, sigma2), rel=1e-8)


def test_frechet_distance_of_identical_feature_sets_is_zero_even_when_singular():
    rng = np.random.default_rng(3)
    for n, dim in ((3000, 64), (40, 128)):  # the second has a rank-deficient covariance (n < dim)
        features = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
        mu, sigma = features.mean(0), np.cov(features, rowvar=False)
        value = frechet_distance(mu, sigma, mu, sigma)
        assert isinstance(value, float) and abs(value) < 1e-3
    # Singular but different: real, finite, and equal to the sqrtm route.
    s1, s2 = random_spd(rng, 32, rank=5), random_spd(rng, 32, rank=7)
    mu = np.zeros(32)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(sqrtm_reference(mu, s1, mu, s2), rel=1e-5, abs=1e-6)


def test_frechet_distance_rejects_mismatched_shapes_and_nan():
    with pytest.raises(ValueError, match="sigma2 must have shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))


def test_clipping_counts_values_at_the_ends_of_the_range():
    from apg.evaluation import clipping, per_image_clipping

    burnt = np.full((4, 4, 3), 255, np.uint8)  # white: saturation 0, every value clipped
    half = np.zeros((4, 4, 3), np.uint8)
    half[:, :2] = 128  # half mid-grey, half black
    assert per_image_clipping([burnt, half]).tolist() == [1.0, 0.5]
    floats = torch.tensor([0.0, 0.25, 1.0, 0.999]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert clipping(floats) == 0.5
    assert clipping(Image.new("RGB", (2, 2), (10, 200, 30))) == 0.0
