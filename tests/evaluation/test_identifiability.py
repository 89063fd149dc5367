"""MCC, ROC AUC and map correlation on cases with known answers."""

import numpy as np
import pytest

from jaxvna.evaluation import identifiability


def test_mcc_is_one_under_permutation_sign_and_scale():
  rng = np.random.default_rng(0)
  true = rng.normal(size=(500, 4))
  perm = np.array([2, 0, 3, 1])
  learned = true[:, perm] * np.array([3.0, -1.0, 0.5, -2.0]) + 7.0
  mcc, rows, cols = identifiability.mean_correlation_coefficient(learned, true)
  assert mcc == pytest.approx(1.0)
  np.testing.assert_array_equal(cols[np.argsort(rows)], perm)


def test_mcc_of_a_rotation_and_of_noise_is_low():
  rng = np.random.default_rng(1)
  true = rng.normal(size=(2000, 4))
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  rotated, _, _ = identifiability.mean_correlation_coefficient(true @ q, true)
  noise, _, _ = identifiability.mean_correlation_coefficient(rng.normal(size=(2000, 4)), true)
  assert rotated < 0.9
  assert noise < 0.1


def test_mcc_with_more_learned_than_true_dimensions():
  rng = np.random.default_rng(2)
  true = rng.normal(size=(300, 2))
  learned = np.c_[rng.normal(size=300), true[:, 1], rng.normal(size=300), true[:, 0]]
  mcc, rows, cols = identifiability.mean_correlation_coefficient(learned, true)
  assert mcc == pytest.approx(1.0) and sorted(zip(cols, rows)) == [(0, 3), (1, 1)]
  with pytest.raises(ValueError, match="samples"):
    identifiability.mean_correlation_coefficient(learned[:10], true)


def test_roc_auc_known_values():
  labels = np.array([0, 0, 1, 1, 0, 1], bool)
  assert identifiability.roc_auc(np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7]), labels) == 1.0
  assert identifiability.roc_auc(-np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7]), labels) == 0.0
  assert identifiability.roc_auc(np.ones(6), labels) == 0.5
  # One positive below one negative: 8 of 9 pairs ordered.
  assert identifiability.roc_auc(np.array([0.1, 0.75, 0.8, 0.9, 0.3, 0.7]), labels) == (
      pytest.approx(8 / 9))
  with pytest.raises(ValueError, match="both classes"):
    identifiability.roc_auc(np.ones(3), np.ones(3, bool))


def test_map_correlation():
  a = np.arange(16.0).reshape(4, 4)
  assert identifiability.map_correlation(a, 2 * a + 1) == pytest.approx(1.0)
  assert identifiability.map_correlation(a, -a) == pytest.approx(-1.0)
