"""Training objectives: one function per method, all with the signature

    objective(params, batch, rng, step) -> (loss, metrics)

where `step` is the (traced) optimiser step (for schedules such as KL annealing) and `batch` is the pipeline's global batch dict ("image" (B,H,W,C) uint8, "response"
(B,K) float32 zero-padded, "neuron_mask" (B,K) bool, "subject" (B,) int32). The trainer
differentiates whichever objective the config selects inside its single jitted step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxvna import errors, losses
from jaxvna.models import diffusion, dina, migvis, mivae, towers

Objective = Callable[..., tuple[jax.Array, dict]]


def downsample_images(images: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) uint8 or float -> (B, size*size) float32 grey in [0, 1], area-averaged.

  The direct-decoding target; H and W must be multiples of `size`.
  """
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  x = x.mean(axis=-1)
  b, h, w = x.shape
  if h % size or w % size:
    raise ValueError(f"image size {h}x{w} is not a multiple of decoder size {size}")
  x = x.reshape(b, size, h // size, size, w // size).mean(axis=(2, 4))
  return x.reshape(b, size * size)


def poisson_nll(rates: jax.Array, counts: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over recorded neurons of the Poisson negative log-likelihood (no log y! term).

  rates, counts, mask: (B, K); entries where mask is False are ignored.
  """
  nll = rates - counts * jnp.log(rates + 1e-6)
  return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(mask.sum(), 1)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over entries where mask is True. All arrays (B, K)."""
  return jnp.sum(jnp.where(mask, (pred - target) ** 2, 0.0)) / jnp.maximum(mask.sum(), 1)


def negative_correlation(pred: jax.Array, target: jax.Array) -> jax.Array:
  """1 - mean row-wise Pearson correlation. pred, target: (B, P)."""
  p = pred - pred.mean(-1, keepdims=True)
  t = target - target.mean(-1, keepdims=True)
  r = (p * t).sum(-1) / jnp.sqrt((p * p).sum(-1) * (t * t).sum(-1) + 1e-8)
  return 1.0 - r.mean()


def uses_image_features(config) -> bool:
  """True when the image tower reads precomputed features instead of pixels (LiT-style)."""
  return config.model.image_tower.get("type") == "features"


def image_input(config, batch):
  """The image tower's input of a batch: "image_features" for the `features` tower, else
  "image"."""
  if not uses_image_features(config):
    return batch["image"]
  if "image_features" not in batch:
    raise errors.ConfigError("config.model.image_tower.type='features' needs datasets whose "
                     "recordings carry image_features (e.g. the npz field 'image_features')")
  return batch["image_features"]


def kl_weight(config, step) -> jax.Array:
  """KL annealing: the weight of the ELBO's KL terms, linear from 0 to 1 over
  `mivae.kl_anneal_steps` optimiser steps (1 throughout when that is 0)."""
  steps = config.mivae.kl_anneal_steps
  if not steps:
    return jnp.float32(1.0)
  return jnp.minimum(1.0, step.astype(jnp.float32) / steps)


def make_objective(config, model, mesh, *, neuron_table=None) -> Objective:
  """Returns the objective of `config.method` for `model` (a module from build_model, or
  a MiVAE with `neuron_table`, the training subjects' `neuron_features.neuron_table`)."""
  method = config.method
  if method == "mivae":
    return _mivae_objective(config, model, mesh, neuron_table)
  if method == "dina":
    return _dina_objective(config, model, mesh)
  if method in migvis.METHODS:
    return migvis.make_objective(config, model, mesh)
  if method == "diffusion":
    return diffusion.make_objective(config, model)
  if method == "vna":
    loss_cfg = config.loss

    def vna(params, batch, rng, step=None):
      img_emb, neu_emb, temperature, bias = model.apply(
          {"params": params}, image_input(config, batch), batch["response"], batch["subject"],
          train=True, rngs={"dropout": rng})
      if loss_cfg.type == "clip":
        loss = losses.clip_loss(img_emb, neu_emb, temperature, mesh=mesh, impl=loss_cfg.impl)
      elif loss_cfg.type == "sigmoid":
        loss = losses.sigmoid_loss(img_emb, neu_emb, temperature, bias, mesh=mesh,
                                   impl=loss_cfg.impl)
      else:
        raise errors.ConfigError(f"config.loss.type: unknown {loss_cfg.type!r}; expected clip|sigmoid")
      return loss, {"loss": loss, "temperature": temperature}
    return vna

  if method == "direct_encoding":
    kind = config.baseline.encoding_loss

    def direct_encoding(params, batch, rng, step=None):
      rates = model.apply({"params": params}, image_input(config, batch), batch["subject"],
                          train=True,
                          rngs={"dropout": rng})
      if kind == "poisson":
        loss = poisson_nll(rates, batch["response"], batch["neuron_mask"])
      elif kind == "mse":
        loss = masked_mse(rates, batch["response"], batch["neuron_mask"])
      else:
        raise errors.ConfigError(f"config.baseline.encoding_loss: unknown {kind!r}; expected poisson|mse")
      return loss, {"loss": loss}
    return direct_encoding

  if method == "direct_decoding":
    kind, size = config.baseline.decoding_loss, config.model.decoder_size

    def direct_decoding(params, batch, rng, step=None):
      recon = model.apply({"params": params}, batch["response"], batch["subject"], train=True,
                          rngs={"dropout": rng})
      target = downsample_images(batch["image"], size)
      if kind == "mse":
        loss = jnp.mean((recon - target) ** 2)
      elif kind == "correlation":
        loss = negative_correlation(recon, target)
      else:
        raise errors.ConfigError(f"config.baseline.decoding_loss: unknown {kind!r}; expected mse|correlation")
      return loss, {"loss": loss}
    return direct_decoding

  raise errors.ConfigError(f"config.method: unknown {method!r}; expected "
                   f"vna|direct_encoding|direct_decoding|mivae|dina|group_vae|critic|diffusion")


def _dina_objective(config, model: dina.DINA, mesh) -> Objective:
  """The DINA loss: sum over levels l of level_weights[l] * clip(img_l, neu_l, temperature_l),
  every term through `losses.clip_loss` on the same mesh, in one step."""
  if config.loss.type != "clip":
    raise errors.ConfigError(f"method 'dina' trains with config.loss.type='clip', got {config.loss.type!r}")

  def dina_loss(params, batch, rng, step=None):
    img, neu, temperatures = model.apply({"params": params}, batch["image"], batch["response"],
                                         batch["subject"], train=True, rngs={"dropout": rng})
    metrics, loss = {}, 0.0
    for i, (level, weight) in enumerate(zip(model.levels, model.level_weights)):
      term = losses.clip_loss(img[level], neu[level], temperatures[i], mesh=mesh,
                              impl=config.loss.impl)
      loss = loss + weight * term
      metrics[f"loss_{level}"] = term
      metrics[f"temperature_{level}"] = temperatures[i]
    return loss, dict(metrics, loss=loss)
  return dina_loss


def _mivae_objective(config, model, mesh, neuron_table) -> Objective:
  """The miVAE loss: contrastive term + weighted ELBO, one scalar for the single step.

  loss = contrastive_weight * clip(z_x^c, z_y^c)
         + elbo_weight * (mean_b[neural_nll + beta (kl_shared + kl_subject)
                                 + image_weight (image_nll + beta kl_image)]
                          + l1_weight * sum |loadings| / num_subjects)
  with beta the KL annealing weight (`kl_weight`). Embeddings of the contrastive term are
  the L2-normalised posterior means, exactly as VNA's, through `jaxvna.losses`.
  """
  if neuron_table is None:
    raise ValueError("method 'mivae' needs the training subjects' neuron table")
  table = {k: jnp.asarray(v) for k, v in neuron_table.items()}
  m, size = config.mivae, config.model.decoder_size

  def mivae_loss(params, batch, rng, step):
    r_dropout, r_latent = jax.random.split(rng)
    out = model.apply({"params": params}, image_input(config, batch), batch["response"],
                      batch["subject"], table, train=True,
                      rngs={"dropout": r_dropout, "latent": r_latent})
    terms = mivae.elbo_terms(out, batch["response"], batch["neuron_mask"],
                             downsample_images(batch["image"], size))
    beta = kl_weight(config, step)
    elbo_loss = jnp.mean(terms["neural_nll"] + beta * (terms["kl_shared"] + terms["kl_subject"])
                         + m.image_weight * (terms["image_nll"] + beta * terms["kl_image"]))
    neu_emb = towers.l2_normalize(out["neural"]["shared"][0])
    img_emb = towers.l2_normalize(out["image"]["shared"][0])
    contrastive = losses.clip_loss(img_emb, neu_emb, out["temperature"], mesh=mesh,
                                   impl=config.loss.impl)
    # A Laplace prior on the loadings, per subject: sparse loadings pin the latent axes.
    loadings = params["neural_decoder"]["loadings"]
    sparsity = jnp.sum(jnp.abs(loadings)) / loadings.shape[0]
    loss = m.contrastive_weight * contrastive + m.elbo_weight * (elbo_loss + m.l1_weight * sparsity)
    metrics = {k: jnp.mean(v) for k, v in terms.items()}
    return loss, dict(metrics, loss=loss, contrastive=contrastive, kl_weight=beta,
                      temperature=out["temperature"])
  return mivae_loss
