"""Disentanglement scores on cases with known answers."""

import numpy as np
import pytest

from jaxvna.evaluation import disentanglement


def test_discrete_mutual_information_and_entropy():
  a = np.array([0, 0, 1, 1])
  assert disentanglement.entropy(a) == pytest.approx(np.log(2))
  assert disentanglement.mutual_information(a, a) == pytest.approx(np.log(2))
  assert disentanglement.mutual_information(a, np.array([0, 1, 0, 1])) == pytest.approx(0.0)
  # I(a; b) for a 2x2 table with p = [[3, 1], [1, 3]] / 8.
  a = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  b = np.array([0, 0, 0, 1, 1, 1, 1, 0])
  p = np.array([[3, 1], [1, 3]]) / 8
  expected = np.sum(p * np.log(p / 0.25))
  assert disentanglement.mutual_information(a, b) == pytest.approx(expected)


def test_discretize_equal_width_bins():
  x = np.array([[0.0, 5.0], [0.5, 5.0], [1.0, 5.0]])
  np.testing.assert_array_equal(disentanglement.discretize(x, 2), [[0, 0], [1, 0], [1, 0]])


def factors_and_codes(n=5000, seed=0):
  rng = np.random.default_rng(seed)
  factors = rng.uniform(-1, 1, (n, 2))
  return rng, factors


def test_mig_of_axis_aligned_codes_is_high_and_of_mixed_codes_is_low():
  rng, factors = factors_and_codes()
  noise = rng.normal(size=(len(factors), 1))
  aligned = np.concatenate([factors[:, ::-1], noise], 1)  # permuted, plus a nuisance code
  out = disentanglement.mutual_information_gap(aligned, factors)
  assert out["mig"] > 0.9
  assert np.array(out["mutual_information"]).shape == (3, 2)
  mixed = np.stack([factors.sum(1), factors[:, 0] - factors[:, 1]], 1) / np.sqrt(2)
  assert disentanglement.mutual_information_gap(mixed, factors)["mig"] < 0.1
  with pytest.raises(ValueError, match="at least 2"):
    disentanglement.mutual_information_gap(factors[:, :1], factors)


def test_sap_of_aligned_and_mixed_codes():
  rng, factors = factors_and_codes()
  assert disentanglement.sap_score(factors * [2.0, -3.0], factors)["sap"] == pytest.approx(
      1.0, abs=0.01)
  mixed = np.stack([factors.sum(1), factors[:, 0] - factors[:, 1]], 1)
  assert disentanglement.sap_score(mixed, factors)["sap"] < 0.05


def test_group_scores_forgive_rotations_inside_a_group():
  rng, factors = factors_and_codes()
  nuisance = rng.normal(size=(len(factors), 2))
  angle = 0.7
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  # Group 0 holds both factors, rotated; group 1 holds nuisance only.
  codes = np.concatenate([factors @ rotation, nuisance], 1)
  r2 = disentanglement.group_r2(codes, factors, (2, 2))
  np.testing.assert_allclose(r2[0], 1.0, atol=1e-9)
  assert np.all(r2[1] < 0.01)
  assert disentanglement.group_sap_score(codes, factors, (2, 2))["group_sap"] > 0.99
  # Per dimension the rotation shows.
  assert disentanglement.sap_score(codes, factors)["sap"] < 0.7
  with pytest.raises(ValueError, match="cover 3 of 4"):
    disentanglement.group_r2(codes, factors, (2, 1))


def test_report_collects_every_score():
  _, factors = factors_and_codes(n=500)
  out = disentanglement.report(np.concatenate([factors, factors[:, :1] ** 2], 1), factors,
                               (2, 1))
  assert {"mig", "sap", "group_sap", "mcc", "group_r2", "mig_per_factor"} <= set(out)
  assert out["mcc"] == pytest.approx(1.0)
