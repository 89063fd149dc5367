"""Gabor functions: geometry, phase and the quadrature bank's normalisation."""

import numpy as np

from jaxvna import gabor


def test_gabor_peaks_at_its_centre_and_varies_along_its_orientation():
  g = gabor.gabor(33, (16, 16), orientation=0.0, spatial_frequency=0.1, phase=0.0, sigma=4.0)
  assert g.shape == (33, 33) and g.dtype == np.float32
  assert np.unravel_index(np.argmax(g), g.shape) == (16, 16)
  # orientation 0: the carrier varies along columns, constant along rows near the centre.
  assert abs(g[16, 21] - g[16, 16]) > 0.5
  np.testing.assert_allclose(g[15, 16], g[16, 16], rtol=0.1)


def test_even_and_odd_gabors_are_orthogonal():
  even = gabor.gabor(41, (20, 20), 0.7, 0.125, 0.0, 5.0)
  odd = gabor.gabor(41, (20, 20), 0.7, 0.125, np.pi / 2, 5.0)
  cos = (even * odd).sum() / np.linalg.norm(even) / np.linalg.norm(odd)
  assert abs(cos) < 1e-3


def test_quadrature_bank_is_zero_mean_unit_norm_and_ordered():
  bank = gabor.quadrature_bank(11, orientations=4, spatial_frequencies=(0.125, 0.25))
  assert bank.shape == (11, 11, 2 * 4 * 2)
  np.testing.assert_allclose(bank.mean(axis=(0, 1)), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(bank.reshape(-1, 16), axis=0), 1.0, rtol=1e-5)
  # Pairs (even, odd) of one orientation and frequency are near-orthogonal.
  flat = bank.reshape(-1, 16)
  assert abs(flat[:, 0] @ flat[:, 1]) < 0.1
