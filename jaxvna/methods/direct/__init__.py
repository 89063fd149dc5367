"""The direct baselines, trained with the same towers, data and budget as VNA:

  direct_encoding   image tower -> per-subject linear read-out of every neuron's rate,
                    Poisson (or MSE) loss; compared with measured responses by Pearson r.
  direct_decoding   neural tower -> a grey image of decoder_size x decoder_size, MSE (or
                    1 - correlation) loss; compared with the downsampled image.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxvna import losses, registry
from jaxvna.errors import ConfigError
from jaxvna.evaluation import discriminative, predictivity
from jaxvna.models import inputs, towers


def _build_encoder(config, dataset, aux=None):
  del aux
  return towers.direct_encoder(config.model, dataset.neuron_counts, dataset.image_shape)


def _build_decoder(config, dataset, aux=None):
  del aux
  return towers.direct_decoder(config.model, dataset.neuron_counts)


def _encoding_init_args(config, dataset, aux=None) -> tuple:
  del aux
  images, _, subject = inputs.example_inputs(config, dataset)
  return images, subject


def _decoding_init_args(config, dataset, aux=None) -> tuple:
  del aux
  _, responses, subject = inputs.example_inputs(config, dataset)
  return responses, subject


def encoding_objective(config, model, mesh=None, aux=None):
  """config.baseline.encoding_loss "poisson" (rates vs counts) or "mse", over recorded
  neurons."""
  del mesh, aux
  kind = config.baseline.encoding_loss
  if kind not in ("poisson", "mse"):
    raise ConfigError(f"config.baseline.encoding_loss: unknown {kind!r}; expected poisson|mse")
  loss_fn = losses.poisson_nll if kind == "poisson" else losses.masked_mse

  def direct_encoding(params, batch, rng, step=None):
    rates = model.apply({"params": params}, inputs.image_input(config, batch),
                        batch["subject"], train=True, rngs={"dropout": rng})
    loss = loss_fn(rates, batch["response"], batch["neuron_mask"])
    return loss, {"loss": loss}
  return direct_encoding


def decoding_objective(config, model, mesh=None, aux=None):
  """config.baseline.decoding_loss "mse" or "correlation" against the downsampled image."""
  del mesh, aux
  kind, size = config.baseline.decoding_loss, config.model.decoder_size
  if kind not in ("mse", "correlation"):
    raise ConfigError(f"config.baseline.decoding_loss: unknown {kind!r}; expected "
                      "mse|correlation")

  def direct_decoding(params, batch, rng, step=None):
    recon = model.apply({"params": params}, batch["response"], batch["subject"], train=True,
                        rngs={"dropout": rng})
    target = inputs.downsample_images(batch["image"], size)
    if kind == "mse":
      loss = jnp.mean((recon - target) ** 2)
    else:
      loss = losses.negative_correlation(recon, target)
    return loss, {"loss": loss}
  return direct_decoding


def encoding_represent(config, model, params):
  """Predicted rates of the held-out images, compared with the measured responses by
  Pearson correlation; also their neural predictivity."""
  import jax  # pylint: disable=g-import-not-at-top
  predict = jax.jit(lambda x, s: model.apply({"params": params}, x, s, train=False))

  def represent(held_out, trials, subject, k_max):
    del trials, k_max
    images = inputs.recording_images(config, held_out)
    rates = discriminative.batched_apply(predict, images,
                                         np.full((held_out.num_images,), subject, np.int32))
    rates = rates[:, :held_out.num_neurons]
    return dict(image_repr=rates,
                predictivity=predictivity.predictivity_report(rates, held_out.responses))
  return represent


def decoding_represent(config, model, params):
  """Reconstructions from the held-out responses, compared with the downsampled images by
  Pearson correlation."""
  import jax  # pylint: disable=g-import-not-at-top
  recon = jax.jit(lambda r, s: model.apply({"params": params}, r, s, train=False))

  def represent(held_out, trials, subject, k_max):
    reconstruct = lambda r: discriminative.batched_apply(
        recon, discriminative.padded(r, k_max), np.full((len(r),), subject, np.int32))
    target = inputs.downsample_images(held_out.images, config.model.decoder_size)
    return dict(image_repr=np.asarray(target), mean_repr=reconstruct(held_out.mean_responses),
                trial_repr=reconstruct(trials))
  return represent


METHODS = {
    "direct_encoding": registry.Method(
        name="direct_encoding", build_model=_build_encoder, init_args=_encoding_init_args,
        objective=encoding_objective, represent=encoding_represent, in_demo=True,
        poisson_likelihood=lambda config: config.baseline.encoding_loss == "poisson",
        title="direct encoding", example_config="configs/vna_sim.py:direct_encoding"),
    "direct_decoding": registry.Method(
        name="direct_decoding", build_model=_build_decoder, init_args=_decoding_init_args,
        objective=decoding_objective, represent=decoding_represent, in_demo=True,
        decodes_pixels=True, title="direct decoding",
        example_config="configs/vna_sim.py:direct_decoding"),
}
