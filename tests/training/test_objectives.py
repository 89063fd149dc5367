"""Objectives on tiny cases with known answers."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvna.training import objectives


def test_downsample_images_is_an_area_mean_in_unit_range():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  images[0, :2, :2] = 255  # top-left quadrant white
  out = np.asarray(objectives.downsample_images(images, 2))
  np.testing.assert_allclose(out[0], [1.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(out[1], 0.0)
  with pytest.raises(ValueError, match="multiple"):
    objectives.downsample_images(images, 3)


def test_poisson_nll_ignores_masked_neurons_and_is_minimal_at_the_counts():
  counts = jnp.array([[2.0, 5.0, 0.0]])
  mask = jnp.array([[True, True, False]])
  at_counts = objectives.poisson_nll(counts + 1e-9, counts, mask)
  assert objectives.poisson_nll(counts * 1.5, counts, mask) > at_counts
  # The masked entry (rate 100) does not count.
  same = objectives.poisson_nll(jnp.array([[2.0, 5.0, 100.0]]), counts, mask)
  np.testing.assert_allclose(same, at_counts, rtol=1e-5)
  expected = np.mean([2 - 2 * np.log(2), 5 - 5 * np.log(5)])
  np.testing.assert_allclose(at_counts, expected, rtol=1e-5)


def test_masked_mse_and_negative_correlation():
  pred = jnp.array([[1.0, 2.0, 3.0]])
  target = jnp.array([[1.0, 2.0, 9.0]])
  mask = jnp.array([[True, True, False]])
  assert float(objectives.masked_mse(pred, target, mask)) == 0.0
  np.testing.assert_allclose(objectives.negative_correlation(pred, 2 * pred + 1), 0.0, atol=1e-6)
  np.testing.assert_allclose(objectives.negative_correlation(pred, -pred), 2.0, atol=1e-6)
