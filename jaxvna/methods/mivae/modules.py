"""miVAE: a multi-modal identifiable VAE that aligns subjects with different neurons.

Generative story (after the miVAE paper; where it is silent the choices are ours):

  image y        --image encoder-->  q(z_y | y) = N(mu_y, diag s_y^2), z_y = [z_y^c, z_y^m]
                                      z_y^c: neural-relevant, z_y^m: irrelevant to neurons
  responses x    --set encoder----->  q(z_x | x, neuron features), z_x = [z_x^c, z_x^m]
                                      z_x^c: shared and stimulus-driven, z_x^m: subject-specific
  identifiable conditional prior:    p(z_x^c | u = y) = q(z_y^c | y), a factorised Gaussian
                                      (exponential family) whose natural parameters are an
                                      MLP (the image tower) of the auxiliary variable, the
                                      stimulus (iVAE / pi-VAE); p(z_x^m | u = s) a learned
                                      factorised Gaussian per subject s.
  neural decoder:                     rate_k = a_k softplus(w_k . z_x^c + b_k) exp(c_k . z_x^m),
                                      Poisson counts; per-neuron parameters of the training
                                      subjects, sparse loadings w (L1) so latent axes are
                                      identifiable, and z_x^m a multiplicative (gain) factor.
  image decoder:                      [z_y^c, z_y^m] -> MLP -> downsampled grey image, Gaussian.
  cross-modal term:                   clip_loss(z_x^c mean, z_y^c mean) through jaxvna.losses.

The neural encoder never learns a weight per neuron: each neuron's read-in weight vector
is an MLP of that neuron's identity features (`jaxvna.data.neuron_features`), and the
population is pooled by a sum over neurons. A subject never seen in training is thus
embedded with no parameter update, from its neuron features alone, and permuting a
subject's neurons together with their features leaves its latents unchanged.

Shapes: images (B, H, W, C); responses (B, K_max) zero-padded counts; subject (B,) int32
into the rows of `table` (a `neuron_table` dict: features (S, K_max, F), center, scale
(S, K_max), mask (S, K_max) bool). Latent widths: shared_dim C, subject_dim M,
image_private_dim P.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvna.models import towers
from jaxvna.models.distributions import gaussian_kl, poisson_log_likelihood, sample

Dtype = Any
_LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------- math

def standardize_responses(responses, subject, table):
  """(B, K_max) counts -> (B, K_max) per-neuron standardised log1p responses, 0 on padding.

  `table` is a `neuron_table` dict, subject (B,) int indexes its rows.
  """
  x = (jnp.log1p(jnp.maximum(responses, 0.0)) - table["center"][subject]) / table["scale"][
      subject]
  return jnp.where(table["mask"][subject], x, 0.0)


def varimax(loadings: np.ndarray, *, iterations: int = 200, tol: float = 1e-7) -> np.ndarray:
  """The orthogonal rotation giving loadings the simplest structure (Kaiser 1958).

  Args:
    loadings: (P, C) loadings of P observed units on C latents.

  Returns:
    (C, C) orthogonal R maximising the varimax criterion of loadings @ R (the variance of
    squared loadings per latent); rotated latents are z @ R.
  """
  p, c = loadings.shape
  rotation, total = np.eye(c), 0.0
  for _ in range(iterations):
    rotated = loadings @ rotation
    target = rotated**3 - rotated * (rotated**2).sum(0) / p
    u, sv, vt = np.linalg.svd(loadings.T @ target)
    rotation, previous, total = u @ vt, total, sv.sum()
    if previous and total < previous * (1 + tol):
      break
  return rotation


def rotate_gaussian(mu, logvar, rotation):
  """Marginals of z @ R for z ~ N(mu, diag e^logvar): means mu @ R, variances e^logvar @ R^2."""
  return mu @ rotation, jnp.log(jnp.exp(logvar) @ rotation**2)


def _split_gaussian(h, sizes):
  """(B, 2 * sum(sizes)) -> [(mu, logvar) per size]; logvar soft-bounded to (-8, 4)."""
  out, start = [], 0
  for size in sizes:
    mu = h[:, start:start + size]
    raw = h[:, start + size:start + 2 * size]
    out.append((mu, 6.0 * jnp.tanh(raw / 6.0) - 2.0))
    start += 2 * size
  return out


# ----------------------------------------------------------------------------- modules

class NeuronSetEncoder(nn.Module):
  """Responses of any subject -> (mu, logvar) of z_x^c (C) and z_x^m (M).

  Each response is log1p-compressed and standardised per neuron (table center/scale),
  neurons are dropped with probability `neuron_dropout` at train time, then pooled as
  sum_k x_k W(f_k) / sqrt(K_s) with W an MLP of neuron k's features f_k, followed by an MLP.
  """
  shared_dim: int
  subject_dim: int
  readin_dim: int = 256
  feature_hidden: tuple[int, ...] = (128,)
  hidden: tuple[int, ...] = (256,)
  neuron_dropout: float = 0.1
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, responses, subject, table, *, train: bool, standardized: bool = False):
    s, k = table["mask"].shape
    if responses.shape[-1] != k:
      raise ValueError(f"responses have {responses.shape[-1]} columns; the neuron table has "
                       f"K_max={k}")
    x = responses if standardized else standardize_responses(responses, subject, table)
    if train and self.neuron_dropout > 0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.neuron_dropout, x.shape)
      x = jnp.where(keep, x / (1 - self.neuron_dropout), 0.0)
    act = towers.activation_fn(self.activation)
    h = table["features"].astype(self.dtype)
    for i, width in enumerate(self.feature_hidden):
      h = act(nn.Dense(width, dtype=self.dtype, name=f"feature_mlp{i}")(h))
    weights = nn.Dense(self.readin_dim, dtype=self.dtype, name="neuron_weights")(h)
    counts = jnp.maximum(table["mask"].sum(-1), 1).astype(jnp.float32)
    weights = jnp.where(table["mask"][..., None], weights, 0.0) / jnp.sqrt(counts)[:, None, None]
    # Every example against its own subject's weights in one matmul (as SubjectReadin).
    onehot = jax.nn.one_hot(subject, s, dtype=self.dtype)
    spread = (onehot[:, :, None] * x.astype(self.dtype)[:, None, :]).reshape(x.shape[0], s * k)
    y = spread @ weights.reshape(s * k, self.readin_dim).astype(self.dtype)
    y = act(y + self.param("readin_bias", nn.initializers.zeros, (self.readin_dim,)))
    for i, width in enumerate(self.hidden):
      y = act(nn.Dense(width, dtype=self.dtype, name=f"hidden{i}")(y))
    out = nn.Dense(2 * (self.shared_dim + self.subject_dim), dtype=self.dtype, name="head")(y)
    return _split_gaussian(out.astype(jnp.float32), (self.shared_dim, self.subject_dim))


class NeuralDecoder(nn.Module):
  """(z_x^c (B, C), z_x^m (B, M), subject (B,)) -> Poisson rates (B, K_max), 0 on padding.

  rate_k = exp(log_amplitude_k) softplus(loadings_k . z^c + bias_k) exp(gain_loadings_k . z^m),
  per-neuron parameters stacked (S, K_max, .) for the training subjects.
  """
  num_neurons_per_subject: tuple[int, ...]
  loading_init: float = 0.3

  @nn.compact
  def __call__(self, z_shared, z_subject, subject):
    counts = tuple(int(c) for c in self.num_neurons_per_subject)
    s, k = len(counts), max(counts)
    loadings = self.param("loadings", nn.initializers.normal(self.loading_init),
                          (s, k, z_shared.shape[-1]))
    gain = self.param("gain_loadings", nn.initializers.normal(0.01), (s, k, z_subject.shape[-1]))
    bias = self.param("bias", nn.initializers.zeros, (s, k))
    log_amplitude = self.param("log_amplitude", nn.initializers.zeros, (s, k))
    drive = jnp.einsum("bkc,bc->bk", loadings[subject], z_shared) + bias[subject]
    log_rate = (log_amplitude[subject] + jnp.log(nn.softplus(drive) + 1e-6)
                + jnp.einsum("bkm,bm->bk", gain[subject], z_subject))
    mask = jnp.asarray(towers.neuron_mask(counts))[subject]
    return jnp.where(mask, jnp.exp(jnp.minimum(log_rate, 20.0)), 0.0)


class ImageDecoder(nn.Module):
  """[z_y^c, z_y^m] (B, C + P) -> (B, size * size) grey image mean, and its log-sigma ()."""
  size: int = 16
  hidden: tuple[int, ...] = (256,)
  activation: str = "gelu"

  @nn.compact
  def __call__(self, z):
    act = towers.activation_fn(self.activation)
    for i, width in enumerate(self.hidden):
      z = act(nn.Dense(width, name=f"hidden{i}")(z))
    pixels = nn.Dense(self.size * self.size, name="pixels")(z)
    return pixels, self.param("log_sigma", nn.initializers.constant(math.log(0.1)), ())


class MiVAE(nn.Module):
  """The miVAE: image and neural encoders, decoders, priors and the contrastive temperature.

  Methods:
    encode_images(images) -> {"shared": (mu, logvar) (B, C), "private": (mu, logvar) (B, P)}
    encode_responses(responses, subject, table) -> {"shared": (B, C), "subject": (B, M)}
    __call__(images, responses, subject, table, *, train) -> dict of everything the ELBO
      and the contrastive term need (see `elbo_terms`); rng streams "latent", "dropout".
  """
  image_tower: nn.Module        # -> (B, 2 * (C + P))
  neural_encoder: NeuronSetEncoder
  neural_decoder: NeuralDecoder
  image_decoder: ImageDecoder
  shared_dim: int
  subject_dim: int
  image_private_dim: int
  init_temperature: float = 0.07
  min_temperature: float = 0.01

  def setup(self):
    self.log_temperature = self.param(
        "log_temperature", nn.initializers.constant(math.log(self.init_temperature)), ())
    s = len(self.neural_decoder.num_neurons_per_subject)
    self.subject_prior = self.param("subject_prior", nn.initializers.zeros,
                                    (s, 2, self.subject_dim))

  def temperature(self) -> jax.Array:
    return towers.temperature_from_log(self.log_temperature, self.min_temperature)

  def encode_images(self, images, *, train: bool = False):
    h = self.image_tower(images, train=train).astype(jnp.float32)
    shared, private = _split_gaussian(h, (self.shared_dim, self.image_private_dim))
    return {"shared": shared, "private": private}

  def encode_responses(self, responses, subject, table, *, train: bool = False,
                       standardized: bool = False):
    shared, subj = self.neural_encoder(responses, subject, table, train=train,
                                       standardized=standardized)
    return {"shared": shared, "subject": subj}

  def __call__(self, images, responses, subject, table, *, train: bool):
    img = self.encode_images(images, train=train)
    neu = self.encode_responses(responses, subject, table, train=train)
    rng = self.make_rng("latent") if train else jax.random.key(0)
    r = jax.random.split(rng, 4)
    z_xc, z_xm = sample(r[0], *neu["shared"]), sample(r[1], *neu["subject"])
    z_yc, z_ym = sample(r[2], *img["shared"]), sample(r[3], *img["private"])
    pixels, log_sigma = self.image_decoder(jnp.concatenate([z_yc, z_ym], axis=-1))
    prior = self.subject_prior[subject]
    return {"image": img, "neural": neu, "rates": self.neural_decoder(z_xc, z_xm, subject),
            "subject_prior": (prior[:, 0], prior[:, 1]), "image_mean": pixels,
            "image_log_sigma": log_sigma, "temperature": self.temperature()}


def elbo_terms(out: dict, responses, neuron_mask, image_target) -> dict:
  """Per-example ELBO pieces (all (B,)) from a MiVAE forward pass.

  Args:
    out: MiVAE.__call__ output.
    responses: (B, K_max) counts; neuron_mask: (B, K_max) bool.
    image_target: (B, size * size) grey image in [0, 1] (`downsample_images`).

  Returns:
    {"neural_nll": -log p(x | z_x), "kl_shared": KL(q(z_x^c | x) || p(z_x^c | y)),
     "kl_subject": KL(q(z_x^m | x) || p(z_x^m | s)), "image_nll": -log p(y | z_y),
     "kl_image": KL(q(z_y | y) || N(0, I))}.
  """
  neu, img = out["neural"], out["image"]
  zeros = lambda a: jnp.zeros_like(a)
  log_sigma = out["image_log_sigma"]
  image_nll = jnp.sum(0.5 * ((image_target - out["image_mean"]) / jnp.exp(log_sigma)) ** 2
                      + log_sigma + 0.5 * _LOG_2PI, axis=-1)
  return {
      "neural_nll": -poisson_log_likelihood(responses, out["rates"], neuron_mask),
      "kl_shared": gaussian_kl(*neu["shared"], *img["shared"]),
      "kl_subject": gaussian_kl(*neu["subject"], *out["subject_prior"]),
      "image_nll": image_nll,
      "kl_image": (gaussian_kl(*img["shared"], zeros(img["shared"][0]), zeros(img["shared"][0]))
                   + gaussian_kl(*img["private"], zeros(img["private"][0]),
                                 zeros(img["private"][0]))),
  }


def build_mivae(config, num_neurons_per_subject, image_shape) -> MiVAE:
  """A MiVAE from `config.model` (image_tower as in towers) and `config.mivae` widths."""
  m, mc = config.mivae, config.model
  counts = tuple(int(c) for c in num_neurons_per_subject)
  if not counts or min(counts) < 1:
    raise ValueError(f"miVAE: every subject needs at least one neuron, got counts {counts}")
  dtype = towers.compute_dtype(mc)
  width = 2 * (m.shared_dim + m.image_private_dim)
  return MiVAE(
      image_tower=towers.image_tower(mc.image_tower, width, tuple(image_shape), dtype),
      neural_encoder=NeuronSetEncoder(
          shared_dim=m.shared_dim, subject_dim=m.subject_dim, readin_dim=m.readin_dim,
          feature_hidden=tuple(m.feature_hidden), hidden=tuple(m.hidden),
          neuron_dropout=m.neuron_dropout, dtype=dtype),
      neural_decoder=NeuralDecoder(counts),
      image_decoder=ImageDecoder(size=mc.decoder_size, hidden=tuple(m.image_decoder_hidden)),
      shared_dim=m.shared_dim, subject_dim=m.subject_dim,
      image_private_dim=m.image_private_dim,
      init_temperature=mc.init_temperature, min_temperature=mc.min_temperature)
