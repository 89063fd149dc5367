"""MIG-Vis models: a group-wise disentangled VAE of neural responses and an InfoNCE critic
between images and one latent group (after the MIG-Vis paper; where it is silent the choices
are ours and stated here).

Group-wise disentangled VAE (method "group_vae"):

  responses x  --encoder-->  q(z | x) = N(mu, diag e^logvar),  z = [z_1, ..., z_G],
                             group g of width `groups[g]`; the encoder is a
                             `towers.NeuralTower` (log1p, per-subject read-in, MLP)
  prior                      p(z) = N(0, I)
  decoder                    rate = softplus(readout_s(MLP(z))) per neuron of subject s,
                             Poisson counts (`decoder_hidden=()`: a linear readout of z,
                             the form of the simulator's higher cells)

  loss = mean_b[-log p(x | z) + kl_weight * KL(q(z | x) || p(z))]
         + tc_weight * partial_correlation + l1_weight * sum |readout| / num_subjects
         + supervision_weight * supervision.

The partial-correlation penalty is the total correlation between groups,
E_q(z)[log q(z) - sum_g log q(z_g)] (`group_total_correlation`): zero when the groups of
the aggregated posterior are independent, while dimensions inside a group may depend on
each other. Weak supervision (optional): a linear map of one group's sample predicts
known factors of the image (standardised; squared error over the known entries).

Per-image side information rides in the pipeline's `image_features` field: the known
factors (`supervision_features`) for the VAE, and the VAE's group means of each image's
trial-averaged responses (`group_target_features`) for the critic.

MI critic (method "critic"): for every group g, an image embedding h_g(x) (a shared small
`towers.ConvTower`, one head per group; its receptive field should cover the image) and
a value embedding k_g(z_g) (an MLP), both L2-normalised, scored by
f_g(x, z_g) = h_g(x) . k_g(z_g) / tau_g and trained with the symmetric InfoNCE loss
(`losses.clip_loss`, gathered across devices). log B - loss is the InfoNCE lower bound
of I(x; z_g). For guidance, the critic's pointwise estimate of
log p(z* | x) / p(z*) at a target value z* is f_g(x, z*) - log mean_j exp f_g(x, z_j) over a
reference bank of observed group values z_j (`MICritic.pointwise_mi`).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvna import losses
from jaxvna.models import distributions, towers

FACTOR_SOURCES = ("latents", "image_factors")


# ----------------------------------------------------------------------------- groups

def group_slices(groups: Sequence[int]) -> list[slice]:
  """The columns of each group in the concatenated latent: (2, 3) -> [0:2, 2:5]."""
  ends = np.cumsum(groups)
  return [slice(int(e - g), int(e)) for e, g in zip(ends, groups)]


def group_onehot(groups: Sequence[int]) -> np.ndarray:
  """(D, G) float32: entry (d, g) is 1 when latent dimension d belongs to group g."""
  return np.repeat(np.eye(len(groups), dtype=np.float32), groups, axis=0)


def group_total_correlation(z: jax.Array, mu: jax.Array, logvar: jax.Array,
                            groups: Sequence[int]) -> jax.Array:
  """Minibatch estimate of the total correlation between groups,
  E_q(z)[log q(z) - sum_g log q(z_g)].

  The aggregated posterior q(z) = mean_j q(z | x_j) is estimated over the batch itself
  (beta-TCVAE's minibatch weighted sampling, with the batch as the population), and so is
  each group's marginal q(z_g) = mean_j prod_{d in g} q(z_d | x_j):

    log q(z_i)   ~ logsumexp_j log q(z_i | x_j) - log B,
    log q(z_ig)  ~ logsumexp_j sum_{d in g} log q(z_id | x_j) - log B.

  The estimate is ~0 for independent groups and, for Gaussian aggregates, tends to
  (sum_g log det S_gg - log det S) / 2 as B grows. Its gradient is that of beta-TCVAE's
  estimator (the normaliser only adds a constant), taken over groups instead of
  dimensions; with 1-dimensional groups it is their total correlation.

  Args:
    z: (B, D) samples, z_i ~ q(z | x_i).
    mu, logvar: (B, D) posterior parameters of the same examples.
    groups: group widths, summing to D.

  Returns:
    Scalar float32, mean over the batch.
  """
  if sum(groups) != z.shape[-1]:
    raise ValueError(f"groups {tuple(groups)} sum to {sum(groups)}, latents have {z.shape[-1]}")
  # (B, B, D): log q(z_i,d | x_j), summed within groups by one matmul.
  log_q = distributions.gaussian_log_density(z[:, None, :], mu[None], logvar[None])
  per_group = log_q @ jnp.asarray(group_onehot(groups))                       # (B, B, G)
  log_b = math.log(z.shape[0])
  log_joint = jax.nn.logsumexp(per_group.sum(-1), axis=1) - log_b             # (B,)
  log_marginals = jax.nn.logsumexp(per_group, axis=1) - log_b                 # (B, G)
  return jnp.mean(log_joint - log_marginals.sum(-1))


# ----------------------------------------------------------------------------- side info

def _known_factors(config, recording) -> np.ndarray:
  sup = config.migvis.supervision
  if sup.source not in FACTOR_SOURCES:
    raise ValueError(f"migvis.supervision.source: unknown {sup.source!r}; expected one of "
                     f"{FACTOR_SOURCES}")
  if recording.truth is None or sup.source not in recording.truth:
    raise ValueError(f"migvis.supervision: recording {recording.name} has no truth "
                     f"{sup.source!r} to supervise with")
  return np.asarray(recording.truth[sup.source], np.float32)[:, list(sup.columns)]


def supervision_features(config, dataset):
  """`dataset` with image_features (N, 2F) = [standardised known factors (0 where
  unknown), 1/0 known mask] from truth[migvis.supervision.source][:, columns].

  Factors are standardised with the mean and sd of the training images of all
  recordings together.
  """
  import dataclasses
  from jaxvna.data import Dataset
  values = [_known_factors(config, rec) for rec in dataset.recordings]
  train = np.concatenate([v[rec.indices("train")] for v, rec in zip(values, dataset.recordings)])
  mean, sd = np.nanmean(train, axis=0), np.nanstd(train, axis=0) + 1e-6
  recordings = []
  for v, rec in zip(values, dataset.recordings):
    known = np.isfinite(v)
    standard = np.where(known, (v - mean) / sd, 0.0)
    recordings.append(dataclasses.replace(rec, image_features=np.concatenate(
        [standard, known], axis=1).astype(np.float32)))
  return Dataset(dataset.name, tuple(recordings))


def group_target_features(dataset, group_means: Sequence[np.ndarray]):
  """`dataset` with image_features = the (N, D) VAE group means of each recording's
  images (`group_means[s]`), the critic's targets."""
  import dataclasses
  from jaxvna.data import Dataset
  return Dataset(dataset.name, tuple(
      dataclasses.replace(rec, image_features=np.asarray(m, np.float32))
      for rec, m in zip(dataset.recordings, group_means)))


# ----------------------------------------------------------------------------- VAE

class PoissonDecoder(nn.Module):
  """z (B, D), subject (B,) -> Poisson rates (B, K_max), 0 beyond the subject's neurons:
  softplus of a per-subject linear readout (`readout_kernel` (F, S * K_max)) of MLP(z)."""
  num_neurons_per_subject: tuple[int, ...]
  hidden: tuple[int, ...] = ()
  activation: str = "gelu"

  @nn.compact
  def __call__(self, z: jax.Array, subject: jax.Array) -> jax.Array:
    h, _ = towers.MLP(tuple(self.hidden), self.activation, name="mlp")(z)
    y, mask = towers.per_subject_readout(h, subject, tuple(self.num_neurons_per_subject),
                                          jnp.float32, jnp.float32, self)
    return jnp.where(mask, nn.softplus(y) + 1e-4, 0.0)


class GroupVAE(nn.Module):
  """The group-wise disentangled VAE (module docstring).

  Methods:
    encode(responses (B, K_max), subject (B,), *, train) -> (mu, logvar), each (B, D).
    __call__(responses, subject, *, train) -> {"mu", "logvar", "z" (B, D),
      "rates" (B, K_max), "supervised" (B, F) prediction of the supervised group's
      factors (absent when num_supervised is 0)}; rng streams "latent" (train) and
      "dropout".
  """
  num_neurons_per_subject: tuple[int, ...]
  groups: tuple[int, ...]
  readin_dim: int = 128
  hidden: tuple[int, ...] = (128,)
  neuron_dropout: float = 0.0
  decoder_hidden: tuple[int, ...] = ()
  activation: str = "gelu"
  supervised_group: int = 0
  num_supervised: int = 0

  def setup(self):
    self.encoder = towers.NeuralTower(
        tuple(self.num_neurons_per_subject), readin_dim=self.readin_dim,
        hidden=tuple(self.hidden), embed_dim=2 * sum(self.groups),
        neuron_dropout=self.neuron_dropout, preprocess="log1p", activation=self.activation)
    self.decoder = PoissonDecoder(tuple(self.num_neurons_per_subject),
                                  tuple(self.decoder_hidden), self.activation)
    if self.num_supervised:
      self.supervision_head = nn.Dense(self.num_supervised)

  def encode(self, responses, subject, *, train: bool = False):
    h = self.encoder(responses, subject, train=train)
    d = sum(self.groups)
    # logvar soft-bounded to (-8, 4), as the miVAE's posteriors.
    return h[:, :d], 6.0 * jnp.tanh(h[:, d:] / 6.0) - 2.0

  def __call__(self, responses, subject, *, train: bool):
    mu, logvar = self.encode(responses, subject, train=train)
    z = distributions.sample(self.make_rng("latent"), mu, logvar) if train else mu
    out = {"mu": mu, "logvar": logvar, "z": z, "rates": self.decoder(z, subject)}
    if self.num_supervised:
      out["supervised"] = self.supervision_head(z[:, group_slices(self.groups)[
          self.supervised_group]])
    return out


def build_group_vae(config, num_neurons_per_subject) -> GroupVAE:
  """A GroupVAE from `config.migvis`."""
  m = config.migvis
  counts = tuple(int(c) for c in num_neurons_per_subject)
  if not counts or min(counts) < 1:
    raise ValueError(f"group_vae: every subject needs at least one neuron, got {counts}")
  groups = tuple(int(g) for g in m.groups)
  if not groups or min(groups) < 1:
    raise ValueError(f"migvis.groups: expected positive widths, got {groups}")
  sup = m.supervision
  supervised = len(sup.columns) if sup.weight > 0 else 0
  if supervised and not 0 <= sup.group < len(groups):
    raise ValueError(f"migvis.supervision.group {sup.group} is not one of the "
                     f"{len(groups)} groups")
  return GroupVAE(counts, groups, readin_dim=m.readin_dim, hidden=tuple(m.hidden),
                  neuron_dropout=m.neuron_dropout, decoder_hidden=tuple(m.decoder_hidden),
                  supervised_group=sup.group, num_supervised=supervised)


def make_group_vae_objective(config, model: GroupVAE):
  """The group VAE loss (module docstring) with the trainer's signature
  objective(params, batch, rng, step) -> (loss, metrics). Supervision reads
  batch["image_features"] laid out by `supervision_features`."""
  m = config.migvis
  groups = tuple(m.groups)
  supervised = model.num_supervised

  def group_vae_loss(params, batch, rng, step=None):
    del step
    r_dropout, r_latent = jax.random.split(rng)
    out = model.apply({"params": params}, batch["response"], batch["subject"], train=True,
                      rngs={"dropout": r_dropout, "latent": r_latent})
    nll = -jnp.mean(distributions.poisson_log_likelihood(batch["response"], out["rates"],
                                                 batch["neuron_mask"]))
    zeros = jnp.zeros_like(out["mu"])
    kl = jnp.mean(distributions.gaussian_kl(out["mu"], out["logvar"], zeros, zeros))
    tc = group_total_correlation(out["z"], out["mu"], out["logvar"], groups)
    loadings = params["decoder"]["readout_kernel"]
    sparsity = jnp.sum(jnp.abs(loadings)) / len(model.num_neurons_per_subject)
    loss = nll + m.kl_weight * kl + m.tc_weight * tc + m.l1_weight * sparsity
    metrics = {"neural_nll": nll, "kl": kl, "partial_correlation": tc}
    if supervised:
      features = batch["image_features"]
      target, known = features[:, :supervised], features[:, supervised:]
      supervision = jnp.sum(known * (out["supervised"] - target) ** 2) / jnp.maximum(
          known.sum(), 1.0)
      loss = loss + m.supervision.weight * supervision
      metrics["supervision"] = supervision
    return loss, dict(metrics, loss=loss)
  return group_vae_loss


# ----------------------------------------------------------------------------- critic

class MICritic(nn.Module):
  """InfoNCE critics between an image and each latent group (module docstring).

  Methods (D = sum(groups) concatenated group values, G groups, E = embed_dim):
    embed_images(images (B, H, W, C) uint8, or float in [0, 1]) -> (B, G, E) unit rows.
    embed_values(values (B, D)) -> (B, G, E) unit rows, group g from its own columns.
    temperature() -> (G,).
    __call__(images, values (B, D), *, train) -> (img (B, G, E), val (B, G, E), temp (G,)).
    pointwise_mi(images, targets (B, D), reference (M, D)) -> (B, G).
    expected_values(images, reference (M, D)) -> (B, D).
  """
  groups: tuple[int, ...]
  channels: tuple[int, ...] = (32, 64, 128)
  hidden: tuple[int, ...] = (128,)
  embed_dim: int = 32
  value_hidden: tuple[int, ...] = (64,)
  init_temperature: float = 0.1
  min_temperature: float = 0.01

  def setup(self):
    self.image_tower = towers.ConvTower(channels=tuple(self.channels),
                                        hidden=tuple(self.hidden),
                                        embed_dim=len(self.groups) * self.embed_dim,
                                        **_CRITIC_CNN)
    self.value_mlps = [towers.MLP(tuple(self.value_hidden), "gelu")
                       for _ in self.groups]
    self.value_heads = [nn.Dense(self.embed_dim) for _ in self.groups]
    self.log_temperature = self.param(
        "log_temperature", nn.initializers.constant(math.log(self.init_temperature)),
        (len(self.groups),))

  def temperature(self) -> jax.Array:
    return towers.temperature_from_log(self.log_temperature, self.min_temperature)

  def embed_images(self, images):
    h = self.image_tower(images, train=False)
    return towers.l2_normalize(h.reshape(h.shape[0], len(self.groups), self.embed_dim))

  def embed_values(self, values):
    values = values.astype(jnp.float32)
    return jnp.stack([towers.l2_normalize(head(mlp(values[:, s])[0])) for mlp, head, s in zip(
        self.value_mlps, self.value_heads, group_slices(self.groups))], axis=1)

  def __call__(self, images, values, *, train: bool):
    del train
    return self.embed_images(images), self.embed_values(values), self.temperature()

  def _reference_logits(self, images, reference):
    """(img (B, G, E), f_g(x_b, z_m) (B, G, M))."""
    img = self.embed_images(images)
    logits = jnp.einsum("bge,mge->bgm", img, self.embed_values(reference))
    return img, logits / self.temperature()[:, None]

  def pointwise_mi(self, images, targets, reference):
    """f_g(x, z*_g) - log mean_m exp f_g(x, z_m) for every group: the critic's estimate of
    the pointwise mutual information log p(z*_g | x) / p(z*_g) of each image with its
    target values (the guidance score)."""
    img, logits = self._reference_logits(images, reference)
    positive = jnp.sum(img * self.embed_values(targets), -1) / self.temperature()
    return positive - jax.nn.logsumexp(logits, axis=-1) + math.log(reference.shape[0])

  def expected_values(self, images, reference):
    """The critic's reading of every group: E[z_g | x] over the reference bank, weights
    softmax_m f_g(x, z_m), groups concatenated."""
    _, logits = self._reference_logits(images, reference)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.concatenate([weights[:, g] @ reference[:, s]
                            for g, s in enumerate(group_slices(self.groups))], axis=1)


# The critic's CNN beyond its widths: 3x3 stride-2 GELU convs, mean pooling, no front end.
_CRITIC_CNN = dict(kernel_size=3, strides=2, pool="mean", activation="gelu", front_end=None,
                   gabor=None, input_mean=0.5, input_std=0.25)


def build_critic(config) -> MICritic:
  """An MICritic from `config.migvis.groups` and `config.critic`."""
  c = config.critic
  return MICritic(groups=tuple(int(g) for g in config.migvis.groups),
                  channels=tuple(c.channels), hidden=tuple(c.hidden), embed_dim=c.embed_dim,
                  value_hidden=tuple(c.value_hidden), init_temperature=c.init_temperature,
                  min_temperature=c.min_temperature)


def make_critic_objective(config, model: MICritic, mesh):
  """The critic loss: sum over groups of the symmetric InfoNCE between image and value
  embeddings, the values being batch["image_features"] (`group_target_features`).

  Images get Gaussian pixel noise of a random sd, uniform in [0, critic.noise_sd] (pixel
  range 1) per image: a critic that is insensitive to small perturbations has gradients
  that change what it reads rather than exploit it, which guidance relies on.
  Metrics: loss, and mi_bound{g} = log B - InfoNCE_g, the lower bound of I(x; z_g) in nats.
  """
  impl, noise_sd = config.loss.impl, config.critic.noise_sd

  def critic_loss(params, batch, rng, step=None):
    del step
    images = batch["image"]
    if noise_sd > 0:
      r_sd, r_noise = jax.random.split(rng)
      sd = noise_sd * jax.random.uniform(r_sd, (images.shape[0], 1, 1, 1))
      images = images.astype(jnp.float32) / 255.0 + sd * jax.random.normal(
          r_noise, images.shape)
    img, val, temperature = model.apply({"params": params}, images,
                                        batch["image_features"], train=True)
    per_group = [losses.clip_loss(img[:, g], val[:, g], temperature[g], mesh=mesh, impl=impl)
                 for g in range(len(model.groups))]
    log_b = math.log(batch["image"].shape[0])
    metrics = {f"mi_bound{g}": log_b - l for g, l in enumerate(per_group)}
    loss = sum(per_group)
    return loss, dict(metrics, loss=loss)
  return critic_loss
