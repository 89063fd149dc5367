"""Score-based attribution on a toy encoder whose answer is known, and neuron grouping."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxvna.methods.mivae import attribution


def test_linear_gaussian_encoder_attribution_follows_the_weights():
  # mu = x @ W, fixed variance s^2: d log q(z_j|x)/dx_i = (z_j - mu_j)/s^2 W_ij, whose mean
  # magnitude is E|eps| / s * |W_ij| = sqrt(2/pi) / s * |W_ij|.
  rng = np.random.default_rng(0)
  w = np.zeros((6, 3), np.float32)
  w[0, 0], w[1, 0], w[2, 1], w[4, 2] = 2.0, -1.0, 0.5, 3.0
  s = 0.5
  encode = lambda x: (x @ jnp.asarray(w), jnp.full((x.shape[0], 3), 2 * np.log(s)))
  x = rng.normal(size=(400, 6)).astype(np.float32)
  maps = attribution.score_attribution(encode, x, jax.random.key(0), num_samples=8,
                                       batch_size=128)
  assert maps.shape == (3, 6)
  expected = np.sqrt(2 / np.pi) / s * np.abs(w.T)
  np.testing.assert_allclose(maps, expected, rtol=0.08, atol=1e-6)
  assert np.all(maps[w.T == 0] == 0)


def test_input_shape_is_kept_for_images():
  encode = lambda x: (x.reshape(x.shape[0], -1)[:, :2] * 1.0, jnp.zeros((x.shape[0], 2)))
  x = np.random.default_rng(1).normal(size=(10, 4, 4, 1)).astype(np.float32)
  maps = attribution.score_attribution(encode, x, jax.random.key(1), num_samples=2)
  assert maps.shape == (2, 4, 4, 1)
  assert maps[0, 0, 0, 0] > 0 and maps[0, 0, 1, 0] == 0 and maps[1, 0, 1, 0] > 0


def test_neuron_groups_recover_planted_groups():
  rng = np.random.default_rng(2)
  centers = np.eye(3)
  truth = np.repeat(np.arange(3), 20)
  profiles = np.abs(centers[truth] * rng.uniform(0.5, 3.0, (60, 1))
                    + rng.normal(0, 0.05, (60, 3)))
  labels, centroids = attribution.neuron_groups(profiles, 3, seed=0)
  assert centroids.shape == (3, 3)
  for g in range(3):  # each planted group lands in one cluster
    assert len(set(labels[truth == g])) == 1
  assert len(set(labels)) == 3


def test_plots_are_written(tmp_path):
  maps = np.random.default_rng(3).random((3, 8, 8))
  attribution.plot_pixel_maps(maps, tmp_path / "p.png", reference=maps)
  attribution.plot_neuron_groups(np.random.default_rng(4).random((20, 3)),
                                 np.arange(20) % 4, tmp_path / "g.png")
  assert (tmp_path / "p.png").stat().st_size > 1000
  assert (tmp_path / "g.png").stat().st_size > 1000
