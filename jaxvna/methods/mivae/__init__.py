"""miVAE: a multi-modal identifiable VAE. Images and the responses of subjects with
different neurons share one latent space (a set encoder over neuron identity features),
with per-subject latents beside it; held-out subjects are embedded without training
(zero-shot), and score-based attribution maps latents to pixels and neurons."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvna import losses, registry
from jaxvna.methods.mivae import evaluation, modules
from jaxvna.models import inputs, towers


def prepare(config, dataset) -> dict:
  """The training subjects' neuron table (identity features, standardisation)."""
  return evaluation.neuron_table(config, dataset, [rec.name for rec in dataset.recordings])


def build_model(config, dataset, aux=None):
  del aux
  return modules.build_mivae(config, dataset.neuron_counts, dataset.image_shape)


def init_args(config, dataset, aux=None) -> tuple:
  table = aux if aux is not None else prepare(config, dataset)
  return (*inputs.example_inputs(config, dataset), jax.tree.map(jnp.asarray, table))


def kl_weight(config, step) -> jax.Array:
  """KL annealing: the weight of the ELBO's KL terms, linear from 0 to 1 over
  `mivae.kl_anneal_steps` optimiser steps (1 throughout when that is 0)."""
  steps = config.mivae.kl_anneal_steps
  if not steps:
    return jnp.float32(1.0)
  return jnp.minimum(1.0, step.astype(jnp.float32) / steps)


def objective(config, model, mesh, aux=None):
  """The miVAE loss: contrastive term + weighted ELBO, one scalar for the single step.

  loss = contrastive_weight * clip(z_x^c, z_y^c)
         + elbo_weight * (mean_b[neural_nll + beta (kl_shared + kl_subject)
                                 + image_weight (image_nll + beta kl_image)]
                          + l1_weight * sum |loadings| / num_subjects)
  with beta the KL annealing weight (`kl_weight`). Embeddings of the contrastive term are
  the L2-normalised posterior means, exactly as VNA's, through `jaxvna.losses`.
  """
  if aux is None:
    raise ValueError("method 'mivae' needs the training subjects' neuron table (aux)")
  table = {k: jnp.asarray(v) for k, v in aux.items()}
  m, size = config.mivae, config.model.decoder_size

  def mivae_loss(params, batch, rng, step):
    r_dropout, r_latent = jax.random.split(rng)
    out = model.apply({"params": params}, inputs.image_input(config, batch), batch["response"],
                      batch["subject"], table, train=True,
                      rngs={"dropout": r_dropout, "latent": r_latent})
    terms = modules.elbo_terms(out, batch["response"], batch["neuron_mask"],
                             inputs.downsample_images(batch["image"], size))
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


def evaluate(config, model, params, dataset, workdir=None) -> dict:
  return {"mivae": evaluation.evaluate(config, model, params, dataset, workdir=workdir)}


def training_subjects(config, dataset):
  """Every subject but the held-out ones (`config.mivae.holdout_subjects`)."""
  return evaluation.split_subjects(config, dataset)[0]


def _neurons_shuffled(config):
  c = config.copy_and_resolve_references()
  c.mivae.shuffle_neurons = True
  return c


# Trained with every neuron's identity features moved to another neuron (pooled across
# subjects), miVAE cannot tell a held-out subject's neurons apart: zero-shot at chance.
NEURONS_SHUFFLED = registry.NullControl(
    name="null_neurons", change=_neurons_shuffled,
    at_chance=lambda config, dataset: evaluation.split_subjects(config, dataset)[1],
    description="neuron identity features shuffled across subjects")

METHODS = {"mivae": registry.Method(
    name="mivae", build_model=build_model, init_args=init_args, objective=objective,
    evaluate=evaluate, prepare=prepare, training_subjects=training_subjects,
    poisson_likelihood=lambda config: True, decodes_pixels=True, title="miVAE",
    example_config="configs/mivae_sim.py", null_controls=(NEURONS_SHUFFLED,),
    summary=evaluation.summary_table)}
