"""Tests for the Gabor-energy + ridge reference model (jaxvna.models.gabor_ridge)."""

import numpy as np
import pytest

from jaxvna.data.dataset import DataError
from jaxvna.gabor import complex_gabor_1d, gabor, quadrature_bank
from jaxvna.models.gabor_ridge import (GaborRidge, RidgeCV, gabor_energy_features, identify,
                                       neuron_correlations, pyramid_layout, resolvable_frequencies,
                                       ridge_coefficients, trial_average)

SIZE = 32
FREQUENCIES = (2.0, 4.0, 8.0)
ORIENTATIONS = 8


def pink_noise_images(n, size, seed):
  """(n, size, size, 1) uint8 images with a 1/f amplitude spectrum, like natural scenes."""
  rng = np.random.default_rng(seed)
  fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
  amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
  spectrum = np.fft.fft2(rng.standard_normal((n, size, size))) * amplitude
  images = np.fft.ifft2(spectrum).real
  images = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(axis=(1, 2),
                                                                            keepdims=True)
  return np.clip(128 + 40 * images, 0, 255).astype(np.uint8)[..., None]


def gabor_energy_population(images, num_neurons, seed):
  """Noise-free responses of complex cells placed on units of the pyramid (N, K)."""
  rng = np.random.default_rng(seed)
  layout = pyramid_layout((SIZE, SIZE), spatial_frequencies=FREQUENCIES,
                          orientations=ORIENTATIONS)
  units = rng.choice(len(layout["row"]), num_neurons, replace=False)
  grey = images[..., 0].astype(np.float64) / 255.0
  grey -= grey.mean(axis=(1, 2), keepdims=True)
  responses = []
  for u in units:
    centre = (float(layout["row"][u]), float(layout["col"][u]))
    pair = [gabor(SIZE, centre, layout["orientation"][u], layout["cycles_per_pixel"][u],
                  phase, layout["sigma"][u]) for phase in (0.0, np.pi / 2)]
    even, odd = (np.einsum("nhw,hw->n", grey, k) for k in pair)
    energy = np.sqrt(even**2 + odd**2)
    responses.append(energy / energy.std())
  return np.stack(responses, axis=1)


@pytest.fixture(scope="module")
def population():
  images = pink_noise_images(1500, SIZE, seed=0)
  clean = gabor_energy_population(images, num_neurons=16, seed=1)
  features = gabor_energy_features(images, spatial_frequencies=FREQUENCIES)
  return images, clean, features


def test_complex_gabor_1d_factors_give_gabor():
  size, centre, theta, f, sigma = 17, (8.0, 8.0), 0.6, 0.15, 2.5
  offsets = np.arange(size) - centre[0]
  complex_gabor = np.outer(complex_gabor_1d(offsets, f * np.sin(theta), sigma),
                           complex_gabor_1d(offsets, f * np.cos(theta), sigma))
  np.testing.assert_allclose(complex_gabor.real, gabor(size, centre, theta, f, 0.0, sigma),
                             atol=1e-6)
  np.testing.assert_allclose(-complex_gabor.imag,
                             gabor(size, centre, theta, f, np.pi / 2, sigma), atol=1e-6)


def test_features_equal_brute_force_quadrature_bank_energies():
  # Non-square images, a coarse scale whose kernel outgrows the image, and grid positions
  # near the border, all against an explicit zero-padded correlation.
  rng = np.random.default_rng(1)
  images = rng.random((3, 20, 26, 3)).astype(np.float32)
  frequencies, orientations = (1.0, 2.0, 3.0, 5.0), 4
  features = gabor_energy_features(images, spatial_frequencies=frequencies,
                                   orientations=orientations, compression="none")
  layout = pyramid_layout((20, 26), spatial_frequencies=frequencies, orientations=orientations)
  grey = images.mean(-1)
  grey -= grey.mean(axis=(1, 2), keepdims=True)
  expected = np.zeros_like(features)
  for j in range(features.shape[1]):
    half = min(int(np.ceil(3 * layout["sigma"][j])), 25)
    size = 2 * half + 1
    kernels = quadrature_bank(size, orientations, (layout["cycles_per_pixel"][j],))
    k = int(round(layout["orientation"][j] / (np.pi / orientations)))
    padded = np.pad(grey, ((0, 0), (half, half), (half, half)))
    r, c = layout["row"][j], layout["col"][j]
    patch = padded[:, r:r + size, c:c + size]
    even = (patch * kernels[..., 2 * k]).sum(axis=(1, 2))
    odd = (patch * kernels[..., 2 * k + 1]).sum(axis=(1, 2))
    expected[:, j] = np.sqrt(even**2 + odd**2)
  np.testing.assert_allclose(features, expected, atol=1e-5)


def test_feature_shapes_and_layout():
  rng = np.random.default_rng(0)
  colour = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
  features = gabor_energy_features(colour)
  assert features.shape == (4, 8 * (1 + 4 + 16 + 64 + 256)) and features.dtype == np.float32
  grey = rng.random((2, 48, 48)).astype(np.float32)
  assert gabor_energy_features(grey, orientations=4, spatial_frequencies=(2, 4)).shape == (
      2, 4 * (4 + 16))
  layout = pyramid_layout((64, 64))
  assert all(v.shape == (features.shape[1],) for v in layout.values())
  # The finest grid tiles the image with one unit per wavelength.
  finest = layout["cycles_per_image"] == 16
  assert set(np.unique(layout["row"][finest])) == set(range(2, 64, 4))
  assert np.all(np.isfinite(features)) and np.all(features >= 0)


def test_features_ignore_mean_luminance_and_batching():
  rng = np.random.default_rng(2)
  images = rng.random((9, 32, 32, 3)).astype(np.float32) * 0.5
  kwargs = dict(spatial_frequencies=FREQUENCIES)
  base = gabor_energy_features(images, **kwargs)
  np.testing.assert_allclose(gabor_energy_features(images + 0.3, **kwargs), base, atol=1e-5)
  # Per-image normalisation: a chunk's features do not depend on the other images in it
  # (up to BLAS rounding, which varies with the matrix shape).
  np.testing.assert_allclose(gabor_energy_features(images, chunk_size=4, **kwargs), base,
                             rtol=1e-6, atol=1e-7)
  compressed = gabor_energy_features(images, compression="none", **kwargs)
  np.testing.assert_allclose(base, np.log1p(compressed), rtol=1e-5, atol=1e-6)


def test_feature_input_errors():
  with pytest.raises(DataError, match="images"):
    gabor_energy_features(np.full((2, 16, 16, 1), 255.0), spatial_frequencies=(2,))
  with pytest.raises(DataError, match="images"):
    gabor_energy_features(np.zeros((16, 16)))
  with pytest.raises(ValueError, match="Nyquist"):
    gabor_energy_features(np.zeros((1, 16, 16), np.uint8), spatial_frequencies=(16,))
  with pytest.raises(ValueError, match="compression"):
    GaborRidge(compression="cube")


def test_resolvable_frequencies_are_those_with_a_wavelength_of_two_pixels_or_more():
  assert resolvable_frequencies(64, 64) == (1.0, 2.0, 4.0, 8.0, 16.0)
  assert resolvable_frequencies(31, 31) == (1.0, 2.0, 4.0, 8.0)  # 31 / 16 < 2 px
  assert resolvable_frequencies(40, 32) == (1.0, 2.0, 4.0, 8.0, 16.0)  # the shorter side
  frequencies = resolvable_frequencies(31, 31)
  gabor_energy_features(np.zeros((1, 31, 31), np.uint8), spatial_frequencies=frequencies)


@pytest.mark.parametrize("num_rows", [40, 12])
def test_ridge_path_equals_direct_solve(num_rows):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((num_rows, 20))
  y = rng.standard_normal((num_rows, 3))
  alphas = [0.01, 1.0, 100.0]
  coefs = ridge_coefficients(x, y, alphas)
  for a, coef in zip(alphas, coefs):
    direct = np.linalg.solve(x.T @ x + a * np.eye(20), x.T @ y)
    np.testing.assert_allclose(coef, direct, rtol=1e-7, atol=1e-9)


def test_fitted_ridge_is_direct_solve_on_standardised_features():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((60, 10)) * rng.uniform(0.5, 3, 10) + 2.0
  y = x @ rng.standard_normal((10, 4)) + rng.standard_normal((60, 4)) * [0.1, 1, 3, 10]
  ridge = RidgeCV().fit(x, y, alphas=np.logspace(-2, 4, 7))
  z = (x - x.mean(0)) / x.std(0)
  for k in range(4):
    centred = y[:, k] - y[:, k].mean()
    direct = np.linalg.solve(z.T @ z + ridge.alpha_[k] * np.eye(10), z.T @ centred)
    np.testing.assert_allclose(ridge.coef_[:, k], direct, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(ridge.predict(x), z @ ridge.coef_ + y.mean(0))
  assert ridge.cv_r2_.shape == (7, 4)
  # The noisiest targets are penalised at least as much as the cleanest.
  assert ridge.alpha_[3] >= ridge.alpha_[0]


@pytest.mark.parametrize("num_rows", [30, 8])  # N >= F and N < F: both Gram matrices
def test_leave_one_out_equals_refitting_without_each_row(num_rows):
  rng = np.random.default_rng(12)
  x = rng.standard_normal((num_rows, 12)) * rng.uniform(0.5, 3, 12) + 1.0
  y = x @ rng.standard_normal((12, 3)) + rng.standard_normal((num_rows, 3)) * [0.3, 2, 8]
  alphas = [0.1, 3.0, 100.0]
  ridge = RidgeCV().fit(x, y, alphas=alphas)
  # The standardisation is the all-rows one; the intercept is refitted without the row.
  z = (x - ridge.feature_mean_) / ridge.feature_std_
  for i, a in enumerate(alphas):
    loo = np.empty_like(y)
    for row in range(num_rows):
      keep = np.arange(num_rows) != row
      zk, yk = z[keep], y[keep]
      mean_z, mean_y = zk.mean(0), yk.mean(0)
      coef = np.linalg.solve((zk - mean_z).T @ (zk - mean_z) + a * np.eye(12),
                             (zk - mean_z).T @ (yk - mean_y))
      loo[row] = (z[row] - mean_z) @ coef + mean_y
    r2 = 1 - ((loo - y)**2).sum(0) / ((y - y.mean(0))**2).sum(0)
    np.testing.assert_allclose(ridge.cv_r2_[i], r2, rtol=1e-8, atol=1e-10)
    for k in np.flatnonzero(ridge.alpha_ == a):
      np.testing.assert_allclose(ridge.cv_score_[k], np.corrcoef(loo[:, k], y[:, k])[0, 1],
                                 rtol=1e-6)


def test_predicts_gabor_energy_population_on_held_out_images(population):
  images, clean, _ = population
  rng = np.random.default_rng(5)
  responses = clean + 0.3 * rng.standard_normal(clean.shape)
  train, test = slice(0, 1200), slice(1200, None)
  model = GaborRidge(spatial_frequencies=FREQUENCIES).fit(images[train], responses[train])
  held_out = model.score(images[test], responses[test])
  assert held_out.mean() > 0.7, held_out
  assert model.alpha_.shape == (16,) and model.cv_score_.shape == (16,)
  assert abs(model.cv_score_.mean() - held_out.mean()) < 0.1
  # Kay-style identification among the 300 held-out images.
  predicted = model.predict(images[test])
  accuracy = np.mean(identify(predicted, responses[test]) == np.arange(300))
  assert accuracy > 0.8  # chance is 1/300

  shuffled = responses[train][rng.permutation(1200)]
  control = GaborRidge(spatial_frequencies=FREQUENCIES).fit(images[train], shuffled)
  control_score = control.score(images[test], responses[test])
  assert control_score.mean() < 0.15 and held_out.mean() - control_score.mean() > 0.5


def test_cross_validation_picks_larger_penalty_for_noisier_data(population):
  _, clean, features = population
  rng = np.random.default_rng(6)
  alphas = {}
  for noise in (0.1, 3.0):
    responses = clean + noise * rng.standard_normal(clean.shape)
    model = GaborRidge(alpha_per_neuron=False).fit_features(features, responses)
    assert np.all(model.alpha_ == model.alpha_[0])
    alphas[noise] = model.alpha_[0]
  assert alphas[3.0] > alphas[0.1], alphas


def test_nan_padded_repeats_are_averaged(population):
  _, clean, features = population
  rng = np.random.default_rng(7)
  repeats = clean[:, None, :] + rng.standard_normal((1500, 3, 16))
  repeats[rng.random((1500, 3)) < 0.3] = np.nan
  repeats[:, 0] = clean + rng.standard_normal(clean.shape)  # at least one repeat each
  averaged = np.nanmean(repeats, axis=1)
  np.testing.assert_allclose(trial_average(repeats), averaged)
  a = RidgeCV().fit(features[:400], repeats[:400], alphas=[1.0, 100.0])
  b = RidgeCV().fit(features[:400], averaged[:400], alphas=[1.0, 100.0])
  np.testing.assert_allclose(a.predict(features[400:]), b.predict(features[400:]))
  repeats[5, :, 2] = np.nan
  with pytest.raises(DataError, match="image 5, neuron 2"):
    RidgeCV().fit(features, repeats)
  with pytest.raises(DataError, match="responses"):
    RidgeCV().fit(features, clean[:10])


def test_fit_is_deterministic(population):
  images, clean, _ = population
  responses = clean + 0.5 * np.random.default_rng(8).standard_normal(clean.shape)
  fits = [GaborRidge(spatial_frequencies=FREQUENCIES).fit(images[:300], responses[:300])
          for _ in range(2)]
  np.testing.assert_array_equal(fits[0].alpha_, fits[1].alpha_)
  np.testing.assert_array_equal(fits[0].cv_score_, fits[1].cv_score_)
  np.testing.assert_array_equal(fits[0].predict(images[300:400]), fits[1].predict(images[300:400]))


def test_identify_and_correlations():
  rng = np.random.default_rng(9)
  predicted = rng.standard_normal((50, 30))
  measured = 2 * predicted[::-1] + 0.1 * rng.standard_normal((50, 30)) + 5
  np.testing.assert_array_equal(identify(predicted, measured), np.arange(50)[::-1])
  r = neuron_correlations(predicted, 3 * predicted - 1)
  np.testing.assert_allclose(r, 1.0)
  assert neuron_correlations(np.ones((5, 2)), rng.standard_normal((5, 2))).tolist() == [0, 0]
