"""DINA: images and neural responses aligned at several levels of a hierarchical image tower.

The image tower is a `towers.ConvTower` or a pretrained network (`towers.BackboneTower`,
frozen or fine-tuned); DINA reads its intermediate feature maps (`features["level{i}"]`,
(B, h_i, w_i, C_i), or the Gabor energies `"front_end"`; a backbone's map stages, e.g.
ResNet "layer2".."layer4" or ViT "block{i}") instead of its pooled embedding. Each selected level l has its own head into the shared space:

  1x1 projection     v_l(p) = W_l a_l(p) + b_l                  (B, h, w, D)
  attention pooling  alpha_l(p) = softmax_p(u_l . a_l(p) + c_l + pos_l(p))
                     img_l = normalise(sum_p alpha_l(p) v_l(p))   (B, D)

with pos_l a learned (h, w) positional bias: which positions a population looks at does
not depend on the image, so the attention can learn it directly; the content term u_l
lets salient local features win. The neural tower is one `towers.NeuralTower` trunk whose
linear output is L * D wide: its L chunks of D are the per-level heads (one linear head
per level on a shared trunk), neu_l = normalise(chunk_l).

Each level has its own learnable temperature (init `init_temperature`, clamped below at
`min_temperature`) and its own CLIP term; the objective is
sum_l level_weights[l] * clip_loss(img_l, neu_l, temperature_l) (`jaxvna.methods.dina.objective`).

Joint embedding (evaluation): concat_l sqrt(w_l / sum w) * e_l, unit norm, so the cosine
of two joint embeddings is the level-weighted mean of the per-level cosines, the similarity
that DINA's discriminative evaluation and interpretation use.

The tower's own pooled head (global pool -> MLP -> linear) is not part of DINA: its
parameters exist (the tower builds them) but receive no gradient.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvna.models import towers

Dtype = Any


class AttentionPoolHead(nn.Module):
  """One level's head: 1x1 projection + learned spatial attention pooling.

  __call__(feature_map (B, h, w, C), return_attention=False) -> (B, embed_dim) float32
  (not normalised), or (embedding, attention (B, h, w), summing to 1 over positions).
  Parameters: "project" (C -> embed_dim), "attention" (C -> 1), "position_bias" (h, w).
  """
  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feature_map: jax.Array, return_attention: bool = False):
    if feature_map.ndim != 4:
      raise ValueError(f"AttentionPoolHead: expected a (B, h, w, C) map, got {feature_map.shape}")
    b, h, w, _ = feature_map.shape
    x = feature_map.astype(self.dtype)
    values = nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="project")(x)
    content = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="attention")(x)
    position = self.param("position_bias", nn.initializers.zeros, (h, w), self.param_dtype)
    logits = content[..., 0].astype(jnp.float32) + position.astype(jnp.float32)
    attention = jax.nn.softmax(logits.reshape(b, h * w), axis=-1).reshape(b, h, w)
    emb = jnp.einsum("bhw,bhwd->bd", attention.astype(self.dtype), values).astype(jnp.float32)
    return (emb, attention) if return_attention else emb


class DINA(nn.Module):
  """The DINA dual encoder (module docstring).

  __call__(images (B, H, W, C), responses (B, K_max), subject (B,), *, train) ->
  (img {level: (B, D)}, neu {level: (B, D)}, temperatures (L,)), embeddings L2-normalised
  float32, temperatures in the order of `levels`.
  """
  image_tower: nn.Module       # a towers.ConvTower or towers.BackboneTower
  neural_tower: nn.Module      # a towers.NeuralTower with embed_dim = len(levels) * embed_dim
  levels: tuple[str, ...]
  level_weights: tuple[float, ...]
  embed_dim: int = 128
  init_temperature: float = 0.07
  min_temperature: float = 0.01
  eps: float = 1e-6

  def setup(self):
    self.heads = {level: AttentionPoolHead(self.embed_dim, dtype=self.image_tower.dtype,
                                           param_dtype=self.image_tower.param_dtype)
                  for level in self.levels}
    self.log_temperature = self.param(
        "log_temperature", nn.initializers.constant(math.log(self.init_temperature)),
        (len(self.levels),))

  def feature_maps(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """(B, H, W, C) images -> {level: (B, h, w, C_l)} the aligned feature maps."""
    _, features = self.image_tower(images, train=train, return_features=True)
    missing = [level for level in self.levels if level not in features]
    if missing:
      raise ValueError(f"dina.levels {missing} are not feature maps of the image tower; it "
                       f"has {sorted(k for k, v in features.items() if v.ndim == 4)}")
    return {level: features[level] for level in self.levels}

  def embed_feature_maps(self, maps: dict[str, jax.Array], *,
                         return_attention: bool = False):
    """{level: (B, h, w, C)} -> {level: L2-normalised (B, D)} [, {level: (B, h, w)}]."""
    out = {level: self.heads[level](maps[level], return_attention=True) for level in self.levels}
    embs = {level: towers.l2_normalize(e, self.eps) for level, (e, _) in out.items()}
    if return_attention:
      return embs, {level: a for level, (_, a) in out.items()}
    return embs

  def image_embeddings(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """(B, H, W, C) -> {level: L2-normalised (B, D)}."""
    return self.embed_feature_maps(self.feature_maps(images, train=train))

  def response_embeddings(self, responses: jax.Array, subject: jax.Array, *,
                          train: bool = False) -> dict[str, jax.Array]:
    """(B, K_max) responses, (B,) subject -> {level: L2-normalised (B, D)}."""
    out = self.neural_tower(responses, subject, train=train)
    chunks = out.reshape(out.shape[0], len(self.levels), self.embed_dim)
    return {level: towers.l2_normalize(chunks[:, i], self.eps)
            for i, level in enumerate(self.levels)}

  def joint(self, embeddings: dict[str, jax.Array]) -> jax.Array:
    """{level: unit (B, D)} -> (B, L * D) unit rows whose cosine is the weighted mean of the
    per-level cosines."""
    total = sum(self.level_weights)
    return jnp.concatenate([math.sqrt(w / total) * embeddings[level]
                            for level, w in zip(self.levels, self.level_weights)], axis=-1)

  def embed_images(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """(B, H, W, C) -> joint (B, L * D) image embedding."""
    return self.joint(self.image_embeddings(images, train=train))

  def embed_responses(self, responses: jax.Array, subject: jax.Array, *,
                      train: bool = False) -> jax.Array:
    """(B, K_max), (B,) -> joint (B, L * D) neural embedding."""
    return self.joint(self.response_embeddings(responses, subject, train=train))

  def temperatures(self) -> jax.Array:
    """(L,) clamped temperatures, one per level."""
    return towers.temperature_from_log(self.log_temperature, self.min_temperature)

  def __call__(self, images, responses, subject, *, train: bool):
    return (self.image_embeddings(images, train=train),
            self.response_embeddings(responses, subject, train=train), self.temperatures())


def feature_map_names(image_tower_config) -> tuple[str, ...]:
  """The names of the image tower's feature maps a DINA level may use: the ConvTower's
  levels, or a pretrained backbone's map stages (e.g. ResNet "layer2", ViT "block6")."""
  if image_tower_config.get("type") == "backbone":
    return towers.backbone_feature_maps(image_tower_config)
  channels = image_tower_config["channels"]
  names = tuple(f"level{i + 1}" for i in range(len(channels)))
  return (("front_end",) if image_tower_config.get("front_end") == "gabor" else ()) + names


def build_dina(config, num_neurons_per_subject: Sequence[int],
               image_shape: Sequence[int]) -> DINA:
  """The DINA module of a run config (`config.model` towers, `config.dina` levels).

  Args:
    config: run ConfigDict with model.image_tower.type "cnn" or "backbone", dina.levels
      (names of its feature maps, `feature_map_names`) and dina.level_weights (one positive
      weight per level).
    num_neurons_per_subject: neuron count of each subject.
    image_shape: (H, W, C).

  Returns:
    An unbound DINA module.
  """
  levels = tuple(config.dina.levels)
  weights = tuple(float(w) for w in config.dina.level_weights)
  image_cfg = config.model.image_tower
  if image_cfg.get("type", "cnn") not in ("cnn", "backbone"):
    raise ValueError(f"method 'dina' needs model.image_tower.type 'cnn' or 'backbone' (a "
                     f"hierarchy of feature maps), got {image_cfg.get('type')!r}")
  allowed = feature_map_names(image_cfg)
  if not levels or len(set(levels)) != len(levels) or any(l not in allowed for l in levels):
    raise ValueError(f"dina.levels: expected distinct names among {allowed}, got {levels}")
  if len(weights) != len(levels) or min(weights) <= 0:
    raise ValueError(f"dina.level_weights: expected {len(levels)} positive weights, got {weights}")
  vna = towers.dual_encoder(config.model, num_neurons_per_subject, image_shape)
  embed_dim = config.model.embed_dim
  return DINA(vna.image_tower.clone(),
              vna.neural_tower.clone(embed_dim=len(levels) * embed_dim),
              levels=levels, level_weights=weights, embed_dim=embed_dim,
              init_temperature=config.model.init_temperature,
              min_temperature=config.model.min_temperature)
