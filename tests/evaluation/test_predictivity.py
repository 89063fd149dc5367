"""Tests of the neural predictivity measures on hand-built and simulated responses."""

import numpy as np
import pytest

from jaxvna.evaluation import predictivity as pv


def _simulated(num_images=400, repeats=8, neurons=6, noise=1.0, seed=0, pad=True):
  """True per-image means (N, K) and noisy NaN-padded repeats (N, R, K)."""
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(num_images, neurons)) * np.linspace(0.5, 2.0, neurons)
  responses = mean[:, None] + noise * rng.normal(size=(num_images, repeats, neurons))
  if pad:  # ragged repeats: some images lose their last two repeats
    responses[::3, -2:] = np.nan
  return mean, responses


def _sensorium_feve(targets, outputs):
  """The Sensorium 2022 formula on lists of (repeats_i, K) arrays (images with >= 2 repeats)."""
  image_var = np.vstack([np.var(t, axis=0, ddof=1) for t in targets])
  squared_error = np.vstack([(t - o) ** 2 for t, o in zip(targets, outputs)])
  total = np.var(np.vstack(targets), axis=0, ddof=1)
  noise = image_var.mean(axis=0)
  return 1 - (squared_error.mean(axis=0) - noise) / (total - noise)


def test_per_neuron_correlation_matches_corrcoef():
  rng = np.random.default_rng(0)
  pred, resp = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
  resp[:, 1] += 2 * pred[:, 1]
  expected = [np.corrcoef(pred[:, k], resp[:, k])[0, 1] for k in range(4)]
  np.testing.assert_allclose(pv.per_neuron_correlation(pred, resp), expected, rtol=1e-10)


def test_per_neuron_correlation_zero_variance_and_nan_rows():
  rng = np.random.default_rng(1)
  pred, resp = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
  pred[:, 0] = 0.7  # constant prediction
  resp[:, 1] = -2.0  # silent neuron
  resp[5:9, 2] = np.nan  # unrecorded rows are left out
  corr = pv.per_neuron_correlation(pred, resp)
  assert corr[0] == 0.0 and corr[1] == 0.0
  keep = ~np.isnan(resp[:, 2])
  assert corr[2] == pytest.approx(np.corrcoef(pred[keep, 2], resp[keep, 2])[0, 1], rel=1e-10)


def test_correlation_to_average_uses_recorded_repeats():
  mean, responses = _simulated(num_images=50, repeats=4, neurons=3)
  pred = mean + 0.3 * np.random.default_rng(2).normal(size=mean.shape)
  averaged = np.nanmean(responses, axis=1)
  expected = [np.corrcoef(pred[:, k], averaged[:, k])[0, 1] for k in range(3)]
  np.testing.assert_allclose(pv.correlation_to_average(pred, responses), expected, rtol=1e-10)
  # Averaging removes noise, so it beats the single-trial correlation.
  assert np.all(pv.correlation_to_average(pred, responses)
                > pv.single_trial_correlation(pred, responses))


def test_single_trial_correlation_pairs_each_trial_with_its_image():
  mean, responses = _simulated(num_images=30, repeats=3, neurons=2)
  recorded = ~np.isnan(responses[..., 0])
  trials = responses[recorded]
  repeated_pred = np.repeat(mean[:, None], 3, axis=1)[recorded]
  expected = [np.corrcoef(repeated_pred[:, k], trials[:, k])[0, 1] for k in range(2)]
  np.testing.assert_allclose(pv.single_trial_correlation(mean, responses), expected, rtol=1e-10)


def test_feve_hand_computed():
  # One neuron, two images with repeats [1, 3] and [5, 7], predicted [2, 6]:
  # total var of (1, 3, 5, 7) = 20/3, noise var = mean(2, 2) = 2, MSE = 1,
  # FEVE = 1 - (1 - 2) / (20/3 - 2) = 1 + 3/14.
  responses = np.array([[[1.0], [3.0]], [[5.0], [7.0]]])
  pred = np.array([[2.0], [6.0]])
  assert pv.feve(pred, responses)[0] == pytest.approx(1 + 3 / 14)
  assert pv.fraction_explainable_variance(responses)[0] == pytest.approx((20 / 3 - 2) / (20 / 3))


def test_feve_matches_sensorium_formula_with_ragged_repeats():
  mean, responses = _simulated(num_images=60, repeats=5, neurons=4, seed=3)
  pred = mean + 0.5 * np.random.default_rng(4).normal(size=mean.shape)
  targets = [r[~np.isnan(r[:, 0])] for r in responses]
  outputs = [np.broadcast_to(p, t.shape) for p, t in zip(pred, targets)]
  np.testing.assert_allclose(pv.feve(pred, responses), _sensorium_feve(targets, outputs),
                             rtol=1e-10)


def test_feve_is_one_for_the_true_mean_and_zero_for_the_grand_mean():
  mean, responses = _simulated(num_images=500, repeats=10, neurons=5, seed=5)
  np.testing.assert_allclose(pv.feve(mean, responses), 1.0, atol=0.05)
  # A constant prediction at the grand mean m: MSE = total * (T - 1) / T, so
  # FEVE = 1 - (total (T-1)/T - noise) / (total - noise) = total / (T (total - noise)).
  grand = np.nanmean(responses, axis=(0, 1))
  constant = np.broadcast_to(grand, mean.shape)
  total, noise = pv.explainable_variance(responses)
  num_trials = np.sum(~np.isnan(responses[..., 0]))
  expected = total / (num_trials * (total - noise))
  np.testing.assert_allclose(pv.feve(constant, responses), expected, rtol=1e-8)
  assert np.all(np.abs(expected) < 5e-3)  # O(1/T): zero up to the ddof of the total


def test_feve_excludes_neurons_without_explainable_variance():
  mean, responses = _simulated(num_images=40, repeats=3, neurons=3, pad=False)
  responses[..., 2] = 4.0  # a neuron that never varies has nothing to explain
  result = pv.feve(mean, responses)
  assert np.isnan(result[2]) and np.all(np.isfinite(result[:2]))


def test_feve_needs_repeats():
  mean, responses = _simulated(num_images=20, repeats=1, neurons=2, pad=False)
  with pytest.raises(ValueError, match=">= 2 recorded repeats"):
    pv.feve(mean, responses)
  report = pv.predictivity_report(mean, responses)
  assert report["feve"] is None and report["feve_neurons"] == 0
  assert report["correlation_to_average"] > 0.5


def test_predictivity_report_means():
  mean, responses = _simulated(num_images=100, repeats=4, neurons=4, seed=6)
  pred = mean + 0.5 * np.random.default_rng(7).normal(size=mean.shape)
  report = pv.predictivity_report(pred, responses)
  assert report["num_neurons"] == 4 and report["feve_neurons"] == 4
  assert report["feve"] == pytest.approx(np.mean(pv.feve(pred, responses)))
  assert report["fev"] == pytest.approx(np.mean(pv.fraction_explainable_variance(responses)))
  assert report["correlation_to_average"] == pytest.approx(
      np.mean(pv.correlation_to_average(pred, responses)))
  assert report["single_trial_correlation"] == pytest.approx(
      np.mean(pv.single_trial_correlation(pred, responses)))
  # A high FEV threshold keeps only the neurons it should.
  fev = pv.fraction_explainable_variance(responses)
  strict = pv.predictivity_report(pred, responses, min_fev=float(np.median(fev)))
  assert strict["feve_neurons"] == int(np.sum(fev > np.median(fev)))


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="pred"):
    pv.feve(np.zeros((3, 2)), np.zeros((4, 2, 2)))
  with pytest.raises(ValueError, match="responses"):
    pv.correlation_to_average(np.zeros((3, 2)), np.zeros((3, 2)))
  with pytest.raises(ValueError, match="pred and resp"):
    pv.per_neuron_correlation(np.zeros((3, 2)), np.zeros((3, 3)))
