"""miVAE modules: shapes, neuron-permutation invariance, the conditional prior, the ELBO
on cases with known answers, and the sharded objective against its single-device value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxvna.configs import mivae_sim
from jaxvna.models import distributions
from jaxvna.methods.mivae import modules as mivae
from jaxvna.methods import mivae as mivae_method

K_MAX, F, C, M, P = 12, 5, 3, 2, 4


def tiny_config():
  c = mivae_sim.get_config("tiny")
  c.model.image_tower.hidden = (32,)
  c.model.decoder_size = 4
  c.mivae.shared_dim, c.mivae.subject_dim, c.mivae.image_private_dim = C, M, P
  c.mivae.readin_dim, c.mivae.feature_hidden, c.mivae.hidden = 16, (8,), (16,)
  c.mivae.image_decoder_hidden = (16,)
  c.mivae.kl_anneal_steps = 300  # the sharded objective's step 100 is mid-annealing
  return c


def random_table(rng, counts=(K_MAX, 7)):
  s = len(counts)
  mask = np.arange(K_MAX)[None] < np.asarray(counts)[:, None]
  return {"features": np.where(mask[..., None], rng.normal(size=(s, K_MAX, F)), 0).astype(
              np.float32),
          "center": np.where(mask, rng.uniform(0, 1, (s, K_MAX)), 0).astype(np.float32),
          "scale": np.where(mask, rng.uniform(0.5, 1.5, (s, K_MAX)), 1).astype(np.float32),
          "mask": mask}


def init(config, counts=(K_MAX, 7), batch=6, seed=0):
  rng = np.random.default_rng(seed)
  model = mivae.build_mivae(config, counts, (8, 8, 1))
  table = random_table(rng, counts)
  images = rng.integers(0, 256, (batch, 8, 8, 1)).astype(np.uint8)
  responses = rng.poisson(2.0, (batch, K_MAX)).astype(np.float32)
  subject = (np.arange(batch) % len(counts)).astype(np.int32)
  responses *= table["mask"][subject]
  key = jax.random.key(seed)
  params = model.init({"params": key, "dropout": key, "latent": key}, images, responses,
                      subject, table, train=False)["params"]
  return model, params, table, images, responses, subject


def test_shapes():
  model, params, table, images, responses, subject = init(tiny_config())
  out = model.apply({"params": params}, images, responses, subject, table, train=True,
                    rngs={"dropout": jax.random.key(1), "latent": jax.random.key(2)})
  b = len(images)
  assert [a.shape for a in out["neural"]["shared"]] == [(b, C)] * 2
  assert [a.shape for a in out["neural"]["subject"]] == [(b, M)] * 2
  assert [a.shape for a in out["image"]["shared"]] == [(b, C)] * 2
  assert [a.shape for a in out["image"]["private"]] == [(b, P)] * 2
  assert out["rates"].shape == (b, K_MAX)
  assert out["image_mean"].shape == (b, 16)
  # Padded neurons of the 7-neuron subject have zero rate.
  assert np.all(np.asarray(out["rates"])[subject == 1, 7:] == 0)
  assert np.all(np.asarray(out["rates"])[subject == 0] > 0)


def test_permuting_neurons_with_their_features_leaves_latents_unchanged():
  model, params, table, _, responses, subject = init(tiny_config())
  perm = np.random.default_rng(3).permutation(K_MAX)
  permuted = {k: (v[:, perm] if k != "features" else v[:, perm, :]) for k, v in table.items()}
  encode = lambda t, r: model.apply({"params": params}, r, subject, t,
                                    method=model.encode_responses)["shared"][0]
  z = encode(table, responses)
  np.testing.assert_allclose(encode(permuted, responses[:, perm]), z, rtol=1e-5, atol=1e-5)
  # Permuting responses alone (features left in place) does change the latents.
  assert not np.allclose(encode(table, responses[:, perm]), z, atol=1e-3)


def test_unseen_subject_with_another_neuron_count_is_embedded_without_new_parameters():
  model, params, _, _, _, _ = init(tiny_config())
  rng = np.random.default_rng(5)
  new_table = random_table(rng, counts=(4,))
  responses = rng.poisson(2.0, (3, K_MAX)).astype(np.float32) * new_table["mask"][0]
  z, logvar = model.apply({"params": params}, responses, np.zeros(3, np.int32), new_table,
                          method=model.encode_responses)["shared"]
  assert z.shape == (3, C) and np.all(np.isfinite(z)) and np.all(np.isfinite(logvar))


def test_conditional_prior_is_the_image_posterior_of_the_shared_latent():
  model, params, table, images, responses, subject = init(tiny_config())
  out = model.apply({"params": params}, images, responses, subject, table, train=False)
  terms = mivae.elbo_terms(out, responses, table["mask"][subject],
                           np.zeros((len(images), 16), np.float32))
  expected = distributions.gaussian_kl(*out["neural"]["shared"], *out["image"]["shared"])
  np.testing.assert_allclose(terms["kl_shared"], expected, rtol=1e-6)
  # Another image, same response: another prior, another KL.
  other = model.apply({"params": params}, images[::-1], responses, subject, table, train=False)
  assert not np.allclose(mivae.elbo_terms(other, responses, table["mask"][subject],
                                          np.zeros((len(images), 16)))["kl_shared"],
                         terms["kl_shared"])
  # The subject prior is per subject.
  np.testing.assert_array_equal(out["subject_prior"][0].shape, (len(images), M))


def test_gaussian_kl_known_values():
  zeros = jnp.zeros((1, 1))
  assert float(distributions.gaussian_kl(zeros + 1.0, zeros, zeros, zeros)[0]) == pytest.approx(0.5)
  # KL(N(0, 1) || N(0, e^2)) = 0.5 * (2 - 1 + e^-2 * 1 ... ) closed form:
  kl = float(distributions.gaussian_kl(zeros, zeros, zeros, zeros + 2.0)[0])
  assert kl == pytest.approx(0.5 * (2.0 + np.exp(-2.0) - 1.0), rel=1e-6)
  mu = jnp.asarray([[0.3, -1.0]])
  assert np.allclose(distributions.gaussian_kl(mu, mu * 0 + 0.4, mu, mu * 0 + 0.4), 0.0, atol=1e-7)


def test_elbo_terms_match_closed_forms():
  counts = np.array([[0.0, 3.0, 7.0, 2.0]], np.float32)
  rates = np.array([[0.5, 2.0, 6.0, 9.0]], np.float32)
  mask = np.array([[True, True, True, False]])
  target = np.array([[0.2, 0.8]], np.float32)
  z = lambda d: (jnp.zeros((1, d)), jnp.zeros((1, d)))
  out = {"neural": {"shared": (jnp.ones((1, 2)), jnp.zeros((1, 2))), "subject": z(1)},
         "image": {"shared": (jnp.zeros((1, 2)), jnp.zeros((1, 2))), "private": z(1)},
         "rates": rates, "subject_prior": z(1), "image_mean": np.array([[0.0, 1.0]]),
         "image_log_sigma": jnp.log(0.5)}
  terms = mivae.elbo_terms(out, counts, mask, target)
  nll = -stats.poisson.logpmf(counts[0, :3], rates[0, :3]).sum()
  assert float(terms["neural_nll"][0]) == pytest.approx(nll, rel=1e-5)
  img = -stats.norm.logpdf(target[0], [0.0, 1.0], 0.5).sum()
  assert float(terms["image_nll"][0]) == pytest.approx(img, rel=1e-5)
  assert float(terms["kl_shared"][0]) == pytest.approx(1.0)     # two dims, mean 1 apart
  assert float(terms["kl_subject"][0]) == pytest.approx(0.0)
  assert float(terms["kl_image"][0]) == pytest.approx(0.0)


def test_standardize_responses():
  table = random_table(np.random.default_rng(0))
  r = np.full((2, K_MAX), 3.0, np.float32)
  x = np.asarray(mivae.standardize_responses(r, np.array([0, 1]), table))
  np.testing.assert_allclose(x[0], (np.log1p(3.0) - table["center"][0]) / table["scale"][0],
                             rtol=1e-6)
  assert np.all(x[1, 7:] == 0)


def test_zero_neuron_subject_is_refused():
  with pytest.raises(ValueError, match="at least one neuron"):
    mivae.build_mivae(tiny_config(), (5, 0), (8, 8, 1))


def test_sharded_objective_equals_single_device(objective_single_and_sharded):
  config = tiny_config()
  model, params, table, _, _, _ = init(config)
  rng = np.random.default_rng(1)
  b = 16
  subject = (np.arange(b) % 2).astype(np.int32)
  batch = {"image": rng.integers(0, 256, (b, 8, 8, 1)).astype(np.uint8),
           "response": rng.poisson(2.0, (b, K_MAX)).astype(np.float32) * table["mask"][subject],
           "neuron_mask": table["mask"][subject], "subject": subject}
  (loss1, _, grads1), (loss8, grads8) = objective_single_and_sharded(
      config, model, params, batch, step=jnp.asarray(100, jnp.int32), aux=table)
  assert float(loss8) == pytest.approx(float(loss1), rel=1e-5)
  for g1, g8 in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8)):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-6)


def test_kl_annealing_schedule():
  config = tiny_config()
  config.mivae.kl_anneal_steps = 100
  assert float(mivae_method.kl_weight(config, jnp.asarray(0))) == 0.0
  assert float(mivae_method.kl_weight(config, jnp.asarray(50))) == pytest.approx(0.5)
  assert float(mivae_method.kl_weight(config, jnp.asarray(500))) == 1.0
  config.mivae.kl_anneal_steps = 0
  assert float(mivae_method.kl_weight(config, jnp.asarray(0))) == 1.0


def test_varimax_recovers_a_rotated_sparse_structure():
  rng = np.random.default_rng(0)
  sparse = np.zeros((300, 4))
  for row in sparse:
    row[rng.choice(4, rng.integers(1, 3), replace=False)] = rng.uniform(0.5, 2.0) * rng.choice(
        [-1, 1])
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  rotation = mivae.varimax(sparse @ q)
  np.testing.assert_allclose(rotation @ rotation.T, np.eye(4), atol=1e-6)
  recovered = sparse @ q @ rotation          # equals `sparse` up to column order and sign
  corr = np.abs(np.corrcoef(recovered.T, sparse.T)[:4, 4:])
  assert np.all(corr.max(axis=1) > 0.99)


def test_rotate_gaussian_moments():
  rng = np.random.default_rng(1)
  mu, logvar = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  m, lv = mivae.rotate_gaussian(jnp.asarray(mu), jnp.asarray(logvar), jnp.asarray(q))
  np.testing.assert_allclose(m, mu @ q, rtol=1e-5)
  cov = np.einsum("ji,bj,jk->bik", q, np.exp(logvar), q)   # R^T diag R per example
  np.testing.assert_allclose(np.exp(lv), np.diagonal(cov, axis1=1, axis2=2), rtol=1e-5)
