"""Gabor-LiT: VNA with a fixed image representation ("LiT on fixed features").

The image tower is a fixed Gabor-energy stage (quadrature pairs at several orientations
and spatial frequencies, the energy pooled over a coarse grid and log-compressed) followed
by ONE linear map to the embedding; the neural tower is ONE per-subject linear read-in of
the log1p responses to the embedding. Only the two linear maps and the temperature learn,
with VNA's contrastive loss (CLIP, negatives gathered across devices), so this is the
contrastive counterpart of the Gabor-energy + ridge reference: the same kind of features,
aligned with the responses in a shared space instead of regressed onto each neuron.

Config: `config.gabor_lit` (size, orientations, spatial_frequencies, stride, pool) and
`config.model` (embed_dim, init_temperature, min_temperature, neural_tower.preprocess).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvna import registry
from jaxvna.errors import ConfigError
from jaxvna.evaluation import discriminative
from jaxvna.methods import vna
from jaxvna.models import inputs, towers


class GaborLinearImageTower(nn.Module):
  """(B, H, W, C) images -> fixed Gabor energy -> log(1 + e) -> flatten -> linear (B, D)."""
  embed_dim: int
  size: int
  orientations: int
  spatial_frequencies: tuple[float, ...]
  stride: int
  pool: int

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, return_features: bool = False):
    del train
    x = towers.scale_images(images, 0.5, 0.25, jnp.float32)
    energy = towers.GaborEnergyFrontEnd(
        size=self.size, orientations=self.orientations,
        spatial_frequencies=tuple(self.spatial_frequencies), stride=self.stride,
        pool=self.pool, name="gabor")(x)
    features = jnp.log1p(energy).reshape(energy.shape[0], -1)
    out = towers.Dense(self.embed_dim, name="embed")(features)
    return (out, {"gabor": energy}) if return_features else out


class LinearNeuralTower(nn.Module):
  """(B, K_max) responses, (B,) subject -> preprocess -> per-subject linear (B, D)."""
  num_neurons_per_subject: tuple[int, ...]
  embed_dim: int
  preprocess: str

  @nn.compact
  def __call__(self, responses: jax.Array, subject: jax.Array, *, train: bool):
    del train
    x = towers.preprocess_responses(responses.astype(jnp.float32), self.preprocess)
    return towers.SubjectReadin(tuple(self.num_neurons_per_subject), self.embed_dim,
                                name="readin")(x, subject)


def build_model(config, dataset, aux=None):
  del aux
  if len(dataset.image_shape) != 3:
    raise ConfigError(f"gabor_lit reads (H, W, C) images, got image shape "
                      f"{dataset.image_shape}")
  g, m = config.gabor_lit, config.model
  return towers.DualEncoder(
      GaborLinearImageTower(m.embed_dim, g.size, g.orientations,
                            tuple(g.spatial_frequencies), g.stride, g.pool),
      LinearNeuralTower(tuple(dataset.neuron_counts), m.embed_dim,
                        m.neural_tower.preprocess),
      init_temperature=m.init_temperature, min_temperature=m.min_temperature,
      init_bias=m.init_bias)


def init_args(config, dataset, aux=None) -> tuple:
  del aux
  return inputs.example_inputs(config, dataset)


METHODS = {"gabor_lit": registry.Method(
    # VNA's objective (config.loss: CLIP's InfoNCE, negatives across devices): the model
    # is a DualEncoder like VNA's, only its towers differ.
    name="gabor_lit", build_model=build_model, init_args=init_args, objective=vna.objective,
    represent=discriminative.embedding_represent, in_demo=True, title="Gabor-LiT",
    example_config="configs/vna_sim.py:gabor_lit")}
