"""MIG-Vis models: the partial-correlation penalty on Gaussian cases with known answers,
the group VAE and its sharded objective, the critic's InfoNCE bound and guidance score."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvna.configs import migvis_sim
from jaxvna.data import Dataset, Recording
from jaxvna.methods.migvis import modules as migvis
from jaxvna.training import train

COUNTS = (12, 7)


def tiny_config(method="group_vae"):
  c = migvis_sim.get_config("tiny")
  c.method = method
  c.migvis.groups = (2, 1)
  c.migvis.supervision.update(dict(group=1, columns=(0, 2)))
  c.critic.value_hidden = (16,)
  return c


def gaussian_posteriors(rng, means, sd):
  mu = means.astype(np.float32)
  logvar = np.full_like(mu, np.log(sd**2))
  return mu + sd * rng.standard_normal(mu.shape).astype(np.float32), mu, logvar


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_partial_correlation_matches_the_gaussian_total_correlation(rho):
  # Means ~ N(0, [[1, rho], [rho, 1]]), posteriors N(mean, s^2): the aggregate is
  # N(0, cov + s^2 I), whose total correlation is -log(1 - r^2) / 2, r = rho / (1 + s^2).
  rng = np.random.default_rng(0)
  s = 0.7
  means = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], 1024)
  tc = float(migvis.group_total_correlation(*gaussian_posteriors(rng, means, s), (1, 1)))
  r = rho / (1 + s**2)
  assert tc == pytest.approx(-0.5 * np.log(1 - r**2), abs=0.02)


def test_partial_correlation_ignores_dependence_inside_a_group():
  rng = np.random.default_rng(1)
  means = rng.standard_normal((1024, 3))
  means[:, 1] = 0.95 * means[:, 0] + 0.3 * means[:, 1]
  z, mu, logvar = gaussian_posteriors(rng, means, 0.7)
  assert abs(float(migvis.group_total_correlation(z, mu, logvar, (2, 1)))) < 0.02
  assert float(migvis.group_total_correlation(z, mu, logvar, (1, 1, 1))) > 0.15


def test_partial_correlation_of_duplicated_groups_is_large():
  rng = np.random.default_rng(2)
  means = rng.standard_normal((512, 2))
  z, mu, logvar = gaussian_posteriors(rng, np.concatenate([means, means], 1), 0.1)
  z[:, 2:] = z[:, :2]  # the second group is an exact copy of the first
  assert float(migvis.group_total_correlation(z, mu, logvar, (2, 2))) > 3.0
  with pytest.raises(ValueError, match="sum to 3"):
    migvis.group_total_correlation(z, mu, logvar, (2, 1))


def test_group_slices_and_onehot():
  assert migvis.group_slices((2, 3)) == [slice(0, 2), slice(2, 5)]
  np.testing.assert_array_equal(migvis.group_onehot((2, 1)), [[1, 0], [1, 0], [0, 1]])


def batch_of(rng, b=16, image=8):
  subject = (np.arange(b) % len(COUNTS)).astype(np.int32)
  mask = np.arange(max(COUNTS))[None] < np.asarray(COUNTS)[subject][:, None]
  known = np.ones((b, 2), np.float32)
  known[::3, 1] = 0  # some factors unknown
  return {"image": rng.integers(0, 256, (b, image, image, 1)).astype(np.uint8),
          "response": rng.poisson(2.0, mask.shape).astype(np.float32) * mask,
          "neuron_mask": mask, "subject": subject,
          "image_features": np.concatenate([rng.normal(size=(b, 2)).astype(np.float32),
                                            known], 1)}


def init_params(config, model, batch):
  key = jax.random.key(0)
  if config.method == "critic":
    args = (batch["image"][:1], batch["image_features"][:1, :3])
  else:
    args = (batch["response"][:1], batch["subject"][:1])
  init = jax.jit(model.init, static_argnames="train")
  return init({"params": key, "dropout": key, "latent": key}, *args, train=False)["params"]


def test_group_vae_shapes_and_padding():
  config = tiny_config()
  model = migvis.build_group_vae(config, COUNTS)
  batch = batch_of(np.random.default_rng(0))
  params = init_params(config, model, batch)
  apply = jax.jit(model.apply, static_argnames="train")
  out = apply({"params": params}, batch["response"], batch["subject"], train=True,
              rngs={"dropout": jax.random.key(1), "latent": jax.random.key(2)})
  b = len(batch["subject"])
  assert out["mu"].shape == out["logvar"].shape == out["z"].shape == (b, 3)
  assert out["supervised"].shape == (b, 2)
  rates = np.asarray(out["rates"])
  assert np.all(rates[batch["subject"] == 1, 7:] == 0) and np.all(rates[batch["subject"] == 0] > 0)
  # Evaluation is deterministic: z is the posterior mean.
  eval_out = apply({"params": params}, batch["response"], batch["subject"], train=False)
  np.testing.assert_array_equal(eval_out["z"], eval_out["mu"])


def test_group_vae_objective_sharded_equals_single_device(objective_single_and_sharded):
  config = tiny_config()
  model = migvis.build_group_vae(config, COUNTS)
  batch = batch_of(np.random.default_rng(3))
  params = init_params(config, model, batch)
  (loss1, metrics1, grads1), (loss8, grads8) = objective_single_and_sharded(
      config, model, params, batch, step=jnp.asarray(10, jnp.int32))
  assert {"neural_nll", "kl", "partial_correlation", "supervision"} <= set(metrics1)
  assert float(loss8) == pytest.approx(float(loss1), rel=1e-5)
  for g1, g8 in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8)):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-5)


def test_supervision_loss_reads_only_known_factors():
  config = tiny_config()
  model = migvis.build_group_vae(config, COUNTS)
  batch = batch_of(np.random.default_rng(4))
  params = init_params(config, model, batch)
  objective = jax.jit(train.make_objective(config, model, None))
  _, metrics = objective(params, batch, jax.random.key(0))
  changed = dict(batch, image_features=batch["image_features"].copy())
  changed["image_features"][::3, 1] += 100.0  # unknown entries: ignored
  _, same = objective(params, changed, jax.random.key(0))
  assert float(same["supervision"]) == pytest.approx(float(metrics["supervision"]), rel=1e-6)


def test_supervision_features_standardise_and_mask():
  rng = np.random.default_rng(5)
  n = 20
  factors = rng.normal(3.0, 2.0, (n, 3)).astype(np.float32)
  factors[0, 2] = np.nan
  rec = Recording(name="s0", images=np.zeros((n, 4, 4, 1), np.uint8),
                  responses=np.ones((n, 1, 2), np.float32),
                  neuron_coords=np.zeros((2, 0), np.float32),
                  split=np.zeros(n, np.int8), stimulus_ids=np.arange(n),
                  truth={"latents": factors})
  config = tiny_config()
  out = migvis.supervision_features(config, Dataset("d", (rec,))).recordings[0].image_features
  assert out.shape == (n, 4)
  np.testing.assert_allclose(out[:, 0].mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(out[:, 0].std(), 1.0, atol=1e-4)
  assert out[0, 3] == 0.0 and out[0, 1] == 0.0 and np.all(out[1:, 3] == 1.0)
  config.migvis.supervision.source = "image_factors"
  with pytest.raises(ValueError, match="no truth 'image_factors'"):
    migvis.supervision_features(config, Dataset("d", (rec,)))
  config.migvis.supervision.source = "rates"
  with pytest.raises(ValueError, match="unknown 'rates'"):
    migvis.supervision_features(config, Dataset("d", (rec,)))


def toy_critic_data(rng, n, dependent):
  """8x8 images whose brightness is group 0's value (or independent of it)."""
  values = rng.normal(size=(n, 3)).astype(np.float32)
  drive = values[:, 0] if dependent else rng.normal(size=n)
  level = 128 + 40 * np.clip(drive, -3, 3)
  images = (level[:, None, None, None] + rng.normal(0, 5, (n, 8, 8, 1))).clip(0, 255)
  return images.astype(np.uint8), values


def train_critic(dependent, steps=120, b=64):
  config = tiny_config("critic")
  model = migvis.build_critic(config)
  rng = np.random.default_rng(6)
  images, values = toy_critic_data(rng, 4 * b, dependent)
  batch = {"image": images[:b], "image_features": values[:b]}
  params = init_params(config, model, batch)
  objective = train.make_objective(config, model, None)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, batch):
    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(
        params, batch, jax.random.key(0))
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = tx.init(params)
  for i in range(steps):
    rows = slice((i % 4) * b, (i % 4 + 1) * b)
    params, opt_state, metrics = step(params, opt_state,
                                      {"image": images[rows], "image_features": values[rows]})
  return model, params, metrics


def test_critic_infonce_bound_is_below_log_batch_and_sees_dependence():
  _, _, dependent = train_critic(True)
  _, _, independent = train_critic(False)
  log_b = np.log(64)
  for m in (dependent, independent):
    assert all(float(m[f"mi_bound{g}"]) <= log_b for g in range(2))
  assert float(dependent["mi_bound0"]) > 0.5
  assert float(dependent["mi_bound0"]) > float(independent["mi_bound0"]) + 0.4
  # Group 1 is independent of the images in both cases.
  assert float(dependent["mi_bound1"]) < 0.3


def test_pointwise_mi_and_critic_reading():
  config = tiny_config("critic")
  model = migvis.build_critic(config)
  rng = np.random.default_rng(7)
  images, values = toy_critic_data(rng, 10, True)
  params = init_params(config, model, {"image": images, "image_features": values})
  apply = lambda method, *a: model.apply({"params": params}, *a, method=method)
  # With the target as the only reference the pointwise MI estimate is exactly 0.
  score = apply(model.pointwise_mi, images, np.repeat(values[:1], 10, 0), values[:1])
  assert score.shape == (10, 2)
  np.testing.assert_allclose(score, 0.0, atol=1e-5)
  # Averaged over a reference bank holding the target, it is at most log M.
  score = apply(model.pointwise_mi, images, np.repeat(values[:1], 10, 0), values[:5])
  assert np.all(np.asarray(score) <= np.log(5) + 1e-5)
  reading = np.asarray(apply(model.expected_values, images, values[:5]))
  assert reading.shape == (10, 3)
  assert np.all(reading >= values[:5].min(0) - 1e-6) and np.all(reading <= values[:5].max(0) + 1e-6)


def test_build_rejects_bad_groups():
  config = tiny_config()
  config.migvis.groups = (2, 0)
  with pytest.raises(ValueError, match="positive widths"):
    migvis.build_group_vae(config, COUNTS)
  config = tiny_config()
  config.migvis.supervision.group = 5
  with pytest.raises(ValueError, match="supervision.group 5"):
    migvis.build_group_vae(config, COUNTS)
